"""The one scorer: ``score(protocol, pred_dir, gt_root, split)`` for every benchmark this project reports.

``evaluate.py --protocol ...`` is its command line; ``inference_ytvos.py --score``, ``inference_davis.py
--eval_only``, ``inference_mevis.py --score`` and ``main.py --eval`` call it, so a number means the same whoever
printed it. Each protocol reads a prediction folder written by this project's inference:

========  ===========================================================  ==============================================
protocol  --pred_dir                                                   --gt_root (--split, default)
========  ===========================================================  ==============================================
ytvos     ``[Annotations/]<video>/<exp_id>/<frame>.png`` (0/255)       Ref-YouTube-VOS-layout root with ground truth
          per expression, J&F averaged over expressions                (RefShapes, converted Ref-DAVIS17, a slice of
          (``metrics.ytvos``)                                          Ref-YouTube-VOS train) (``valid``)
davis     ``<video>/<frame>.png`` palette ids of one annotator, or     the DAVIS-2017 folder (ImageSets/2017,
          ``anno_0..anno_3`` of them: the DAVIS-2017 *unsupervised*    Annotations_unsupervised/480p) (``val``)
          protocol, Hungarian matching, mean over annotators
          (``metrics.davis``); the reported Ref-DAVIS17 number
mevis     ``<video>/<exp_id>/<frame>.png``, MeViS's eval_mevis.py      MeViS root with <split>/mask_dict.json
          (``metrics.mevis``)                                          (``valid_u``)
a2d,      ``predictions.json``: every slot's ``{"image_id", "score",   ``ground_truth.json`` (COCO format, one mask a
jhmdb     "segmentation" (RLE)}`` on each sample's annotated frame     sample), or its folder; ``main.py --eval``
          (``metrics.a2d``)                                            writes both to ``<output_dir>/eval_<dataset>``
========  ===========================================================  ==============================================

The ``ytvos`` protocol on converted Ref-DAVIS17 (``main.py --eval`` of a ``davis`` config) and the ``davis``
protocol (``inference_davis.py``) give different numbers by design: the first scores each expression's own binary
mask against its object on the frames of the json, the second lets each annotator's objects compete for every pixel
(argmax over the objects and a 0.1 background), matches the resulting ids to DAVIS-2017's unsupervised objects with
the Hungarian assignment on all annotated frames, and averages over objects and then over the four annotators.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from metrics.tables import a2d_table, result_table, score_table
from util.errors import UserInputError

PROTOCOLS = ("ytvos", "davis", "mevis", "a2d", "jhmdb")
DEFAULT_SPLITS = {"ytvos": "valid", "davis": "val", "mevis": "valid_u", "a2d": None, "jhmdb": None}
A2D_PREDICTIONS = "predictions.json"
A2D_GROUND_TRUTH = "ground_truth.json"
# The keys of each protocol's JSON line (inference_ytvos.py --score, inference_davis.py --eval_only,
# inference_mevis.py --score and evaluate.py --protocol print the same).
YTVOS_KEYS = ("J", "F", "JF", "per_expression", "by_kind")
DAVIS_KEYS = ("J", "F", "JF", "per_object")
MEVIS_KEYS = ("J", "F", "JF", "expressions", "version", "per_expression")


@dataclass
class Report:
    """A protocol's result: ``scores`` (everything its scorer returns), ``results`` (the JSON object printed as
    the last line) and ``text`` (the table printed before it)."""

    protocol: str
    scores: dict
    results: dict
    text: str

    def print(self) -> None:
        print(self.text)
        print(json.dumps(self.results))


def score(protocol: str, pred_dir: str | Path, gt_root: str | Path, split: str | None = None) -> Report:
    """Score the predictions under ``pred_dir`` against ``gt_root`` with ``protocol`` (module docstring);
    ``split`` None takes the protocol's default."""
    if protocol not in PROTOCOLS:
        raise UserInputError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    split = DEFAULT_SPLITS[protocol] if split is None else split
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    if protocol == "ytvos":
        from metrics.ytvos import score_predictions

        scores = score_predictions(pred_dir, gt_root, split)
        return Report(protocol, scores, {key: scores[key] for key in YTVOS_KEYS}, score_table(scores))
    if protocol == "mevis":
        from metrics.mevis import score_mevis

        scores = score_mevis(pred_dir, gt_root, split)
        text = f"MeViS {scores['version']} {split}: {scores['expressions']} expressions\n{score_table(scores)}"
        return Report(protocol, scores, {key: scores[key] for key in MEVIS_KEYS}, text)
    if protocol == "davis":
        return score_davis(pred_dir, gt_root, split)
    return score_a2d(protocol, pred_dir, gt_root)


def score_davis(results_dir: Path, davis_root: Path, split: str = "val") -> Report:
    """One annotator's folder (``{J, F, JF, per_object}``) or the four ``anno_<a>`` folders (their means and
    ``per_annotator``)."""
    from metrics.davis import annotator_folders, evaluate_annotators, evaluate_davis_unsupervised

    folders = annotator_folders(results_dir)
    if folders is None:
        scores = evaluate_davis_unsupervised(davis_root, results_dir, split=split)
        results = {key: scores[key] for key in DAVIS_KEYS}
        return Report("davis", scores, results, result_table({results_dir.name: results}))
    scores = evaluate_annotators(davis_root, folders, split)
    return Report("davis", scores, scores, result_table({**scores["per_annotator"], "mean": scores}))


def read_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{path} is not valid JSON ({error}): {what}") from error


def score_a2d(protocol: str, pred_dir: Path, gt_root: Path) -> Report:
    """``pred_dir/predictions.json`` against the COCO-format ``ground_truth.json`` (``gt_root`` or in it)."""
    from metrics.a2d import a2d_results

    predictions = read_json(pred_dir / A2D_PREDICTIONS, "every query slot's {image_id, score, segmentation} "
                                                        "(main.py --eval writes it to <output_dir>/eval_<dataset>)")
    gt_path = gt_root / A2D_GROUND_TRUTH if gt_root.is_dir() else gt_root
    ground_truth = read_json(gt_path, "the COCO-format ground truth of the annotated frames (main.py --eval writes "
                                      "it beside predictions.json)")
    scores = a2d_results(predictions, ground_truth)
    return Report(protocol, scores, scores, a2d_table(scores, protocol))
