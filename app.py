"""A web demo: upload a video (or pick a RefShapes clip), type sentences, press Segment, watch the masks.

    python app.py --checkpoint outputs/demo/train/last.pth --weights weight_tiny --port 7860
    # prints the local URL once it serves; open it in a browser

The page shows the video with each sentence's mask in its own colour and offers the masks as a zip
(``sentences.json`` and ``<k>/<frame>.png``, 0 background / 255 object, as ``demo.py`` writes them). The video is
decoded, segmented and written clip by clip (``Predictor.stream``), so memory depends on --clip_len and the
resolution, not on the video's length; the progress bar counts the clips. Without --checkpoint (the ``make demo``
checkpoint is the default when it exists) the page serves and says how to get one.
"""
import argparse
import json
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import gradio as gr
import numpy as np

from inference.cli import add_model_arguments, clip_flags_problem, load_predictor
from inference.clips import handing_clip
from inference.writers import mask_png_bytes
from util.errors import UserInputError
from util.video_io import Mp4Writer, VideoReadError, open_video
from util.visualisation import draw_caption, mask_color, overlay_mask

DEMO_CHECKPOINT = Path("outputs/demo/train/last.pth")
DEMO_WEIGHTS = Path("weight_tiny")
DEMO_EXAMPLES = Path("data/refshapes")
NO_CHECKPOINT = ("**No model loaded.** Train the tiny one with `make demo` (about 15 minutes on a CPU; it writes "
                 f"`{DEMO_CHECKPOINT}` and `{DEMO_WEIGHTS}/`), then start `python app.py --checkpoint "
                 f"{DEMO_CHECKPOINT} --weights {DEMO_WEIGHTS}`.")


def example_clips(root: Path | None) -> dict[str, Path]:
    """``{video id: frame folder}`` of the RefShapes valid videos under ``root`` (none when it is absent)."""
    folder = None if root is None else Path(root) / "valid" / "JPEGImages"
    if folder is None or not folder.is_dir():
        return {}
    return {path.name: path for path in sorted(folder.iterdir()) if path.is_dir()}


def parse_sentences(text: str | None) -> list[str]:
    """One sentence a non-empty line; ValueError when there is none."""
    sentences = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not sentences:
        raise UserInputError("Type at least one sentence describing an object (one sentence a line).")
    return sentences


def limited(frames: Iterator[tuple[str, np.ndarray]], max_frames: int) -> Iterator[tuple[str, np.ndarray]]:
    """``frames``, ValueError at frame ``max_frames + 1`` (a video whose header hides its length)."""
    for index, item in enumerate(frames):
        if index == max_frames:
            raise UserInputError(f"The video is longer than {max_frames} frames, this demo's limit; cut it or start "
                                 f"the app with a larger --max_frames.")
        yield item


def segment_to_files(predictor, video: Path, sentences: list[str], out: Path, clip_len: int, overlap: int,
                     max_frames: int, progress=None) -> tuple[Path, Path]:
    """Segment ``video`` (a file or a frame folder) for ``sentences``: ``(out/overlay.mp4, out/masks.zip)``.

    The overlay shows the k-th sentence's mask in ``mask_color(k)`` and the sentences on a band at the top;
    ``progress(fraction, desc)`` is told each frame's clip. ValueError (a readable message) for a file that is
    not a video or one longer than ``max_frames``.
    """
    source = open_video(video)
    if source.num_frames is not None and source.num_frames > max_frames:
        raise UserInputError(f"The video has {source.num_frames} frames, more than this demo's limit of {max_frames}; "
                             f"cut it or start the app with a larger --max_frames.")
    caption = " | ".join(f"{k + 1}: {sentence}" for k, sentence in enumerate(sentences))
    overlay_path, zip_path = out / "overlay.mp4", out / "masks.zip"
    with ExitStack() as stack:
        writer = stack.enter_context(Mp4Writer(overlay_path, source.fps))
        archive = stack.enter_context(zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED))
        archive.writestr("sentences.json", json.dumps({str(k): s for k, s in enumerate(sentences)}, indent=2))
        frames = limited(source.frames(), max_frames)
        for index, (name, frame, probabilities) in enumerate(predictor.stream(frames, sentences, clip_len, overlap)):
            overlay = frame
            for k, mask in enumerate(probabilities > predictor.threshold):  # [K, H, W]
                archive.writestr(f"{k}/{name}.png", mask_png_bytes(mask))
                overlay = overlay_mask(overlay, mask, mask_color(k))
            writer.write(draw_caption(overlay, caption))
            if progress is not None:
                total = source.num_frames or max_frames
                clip, clips = handing_clip(min(index, total - 1), total, clip_len, overlap)
                progress(min(1.0, (index + 1) / total), desc=f"clip {clip} of {clips}")
    return overlay_path, zip_path


def build_app(predictor, examples: dict[str, Path], clip_len: int = 36, overlap: int = 4,
              max_frames: int = 300) -> gr.Blocks:
    """The page; ``predictor`` None serves it with the instructions to get a checkpoint."""

    def segment(video, example, text, progress=gr.Progress()):
        if predictor is None:
            raise gr.Error("No model is loaded: " + NO_CHECKPOINT.replace("**", ""))
        try:
            sentences = parse_sentences(text)
            if not video and not example:
                raise UserInputError("Upload a video (mp4, webm, ...) or pick an example clip.")
            out = Path(tempfile.mkdtemp(prefix="hcd_app_"))
            source = Path(video) if video else examples[example]
            overlay, masks = segment_to_files(predictor, source, sentences, out, clip_len, overlap, max_frames,
                                              progress)
        except VideoReadError as error:
            raise gr.Error(f"That file cannot be read as a video ({error}). Upload an mp4, webm or avi.") from error
        except ValueError as error:
            raise gr.Error(str(error)) from error
        return str(overlay), str(masks)

    with gr.Blocks(title="HCD referring video segmentation") as app:
        gr.Markdown("# HCD: segment the object a sentence describes\nUpload a video or pick an example, type one "
                    f"sentence a line, press **Segment**. Videos of at most {max_frames} frames, processed in clips "
                    f"of {clip_len}.")
        if predictor is None:
            gr.Markdown(NO_CHECKPOINT)
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="Video", sources=["upload"], elem_id="input-video")
                example = gr.Dropdown(choices=list(examples), value=None, label="or an example clip (RefShapes)",
                                      elem_id="example")
                text = gr.Textbox(label="Sentences, one a line", lines=3, elem_id="sentences",
                                  placeholder="the red circle moving left")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="Masks", elem_id="overlay", interactive=False)
                masks = gr.File(label="Masks as PNGs (zip)", elem_id="masks")
        button.click(segment, inputs=[video, example, text], outputs=[overlay, masks], api_name="segment")
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(checkpoint=str(DEMO_CHECKPOINT) if DEMO_CHECKPOINT.is_file() else None,
                        weights=str(DEMO_WEIGHTS) if DEMO_CHECKPOINT.is_file() and DEMO_WEIGHTS.is_dir() else None)
    parser.add_argument("--examples", type=Path, default=DEMO_EXAMPLES,
                        help=f"a RefShapes root whose valid videos the page offers as examples (default "
                             f"{DEMO_EXAMPLES}, none when absent)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for "
                                                            "every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--clip_len", type=int, default=36, help="frames per forward pass (default 36)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive clips (default 4)")
    parser.add_argument("--max_frames", type=int, default=300,
                        help="longest video accepted, in frames; longer ones get a message (default 300)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = clip_flags_problem(args.clip_len, args.overlap)
    if problem:
        parser.error(problem)
    if args.max_frames < 1:
        parser.error(f"--max_frames must be at least 1, got {args.max_frames}")
    predictor = load_predictor(args) if args.checkpoint else None
    app = build_app(predictor, example_clips(args.examples), args.clip_len, args.overlap, args.max_frames)
    app.queue().launch(server_name=args.host, server_port=args.port)
    return 0


if __name__ == "__main__":
    main()
