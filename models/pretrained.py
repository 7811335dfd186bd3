"""HCD's frozen pretrained components: loading them from ``weight/`` and building them on the meta device.

``weight/`` keeps the layout that the paper's README downloads into:

    weight/unet, vae, text_encoder, tokenizer, scheduler   ali-vilab/text-to-video-ms-1.7b (diffusers layout)
    weight/clip                                            laion/CLIP-ViT-H-14-laion2B-s32B-b79K (transformers)
    weight/roberta                                         roberta-base

``load_pretrained`` checks every file it needs first and reports all missing ones in one
``MissingWeightsError`` with the command that downloads them; ``build_pretrained_on_meta`` builds the
full-size modules from the configs stored in ``configs/pretrained`` without any weights (for parameter
counts and shape checks), ``build_pretrained_from_configs`` the same with random weights on a real device (for
full-size runs and benchmarks without downloads). ``scripts/make_tiny_weights.py`` writes a tiny random set in the same layout.
The scheduler is part of the layout but not loaded: HCD runs the UNet once at timestep 0 without noise.
"""
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet3DConditionModel
from transformers import (AutoTokenizer, CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTokenizer,
                          CLIPVisionConfig, CLIPVisionModelWithProjection, PreTrainedTokenizerBase, RobertaConfig,
                          RobertaModel)

from util.errors import UserInputError

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs" / "pretrained"

DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

T2V_REPO = "ali-vilab/text-to-video-ms-1.7b"
CLIP_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
ROBERTA_REPO = "roberta-base"
REPO_SUBFOLDER = {T2V_REPO: "", CLIP_REPO: "clip", ROBERTA_REPO: "roberta"}  # where each download goes


class MissingWeightsError(FileNotFoundError):
    """Files of the pretrained set are missing; ``missing`` lists their paths."""

    def __init__(self, message: str, missing: list[Path]):
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Requirement:
    """A file the loader needs: any one of ``names`` inside ``weights_dir / folder``, obtained from ``repo``."""

    folder: str
    names: tuple[str, ...]
    repo: str
    is_json: bool = False


class CLIPVisionTower(CLIPVisionModelWithProjection):
    """CLIPVisionModelWithProjection that loads quietly from a full CLIPModel checkpoint such as ``weight/clip``.

    The checkpoint's text tower is expected to be left unused; anything else unexpected is still reported.
    """

    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]


def clip_vision_config(clip_config: CLIPConfig) -> CLIPVisionConfig:
    """The vision config of a CLIPModel, with the model's own projection width.

    A CLIPModel config may leave ``vision_config.projection_dim`` at the class default (512) while the
    checkpoint's visual projection has the top-level ``projection_dim`` rows (1024 for CLIP-ViT-H/14).
    """
    vision_config = clip_config.vision_config
    vision_config.projection_dim = clip_config.projection_dim
    return vision_config


@dataclass
class PretrainedComponents:
    """The frozen pretrained modules of HCD (tokenizers are None when built on the meta device).

    unet:              ModelScope T2V UNet3DConditionModel            (weight/unet)
    vae:               AutoencoderKL                                   (weight/vae)
    clip_text:         CLIPTextModel, ModelScope's OpenCLIP-H text tower (weight/text_encoder)
    clip_tokenizer:    CLIPTokenizer for clip_text                     (weight/tokenizer)
    clip_vision:       CLIPVisionModelWithProjection of CLIP-ViT-H/14   (weight/clip)
    roberta:           RobertaModel, with its pooler                   (weight/roberta)
    roberta_tokenizer: the RoBERTa byte-level BPE tokenizer            (weight/roberta)
    """

    unet: UNet3DConditionModel
    vae: AutoencoderKL
    clip_text: CLIPTextModel
    clip_tokenizer: PreTrainedTokenizerBase | None
    clip_vision: CLIPVisionModelWithProjection
    roberta: RobertaModel
    roberta_tokenizer: PreTrainedTokenizerBase | None


# Every file load_pretrained reads, in the order they are reported.
REQUIREMENTS = (
    Requirement("unet", ("config.json",), T2V_REPO, is_json=True),
    Requirement("unet", DIFFUSERS_WEIGHTS, T2V_REPO),
    Requirement("vae", ("config.json",), T2V_REPO, is_json=True),
    Requirement("vae", DIFFUSERS_WEIGHTS, T2V_REPO),
    Requirement("text_encoder", ("config.json",), T2V_REPO, is_json=True),
    Requirement("text_encoder", TRANSFORMERS_WEIGHTS, T2V_REPO),
    Requirement("tokenizer", ("vocab.json",), T2V_REPO, is_json=True),
    Requirement("tokenizer", ("merges.txt",), T2V_REPO),
    Requirement("tokenizer", ("tokenizer_config.json",), T2V_REPO, is_json=True),
    Requirement("clip", ("config.json",), CLIP_REPO, is_json=True),
    Requirement("clip", TRANSFORMERS_WEIGHTS, CLIP_REPO),
    Requirement("roberta", ("config.json",), ROBERTA_REPO, is_json=True),
    Requirement("roberta", TRANSFORMERS_WEIGHTS, ROBERTA_REPO),
    Requirement("roberta", ("vocab.json",), ROBERTA_REPO, is_json=True),
    Requirement("roberta", ("merges.txt",), ROBERTA_REPO),
)


def download_command(repo: str, weights_dir: Path) -> str:
    """The seed README's download command for ``repo`` (the T2V repo fills ``weight/``, the others a subfolder).

    The README's ``huggingface-cli download --resume-download`` is ``hf download`` since huggingface_hub 1.0.
    """
    target = weights_dir / REPO_SUBFOLDER[repo]
    return (f"hf download {repo} --local-dir {target}    "
            f"(huggingface_hub < 1.0: huggingface-cli download --resume-download {repo} --local-dir {target})")


def read_json(path: Path) -> dict:
    """Parse a json object file, raising a UserInputError that names the file when it is not valid json."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path} is not valid json ({error}); the download may be incomplete: delete the file "
                             f"and download it again.") from error
    if not isinstance(value, dict):
        raise UserInputError(f"{path} must hold a json object, found {type(value).__name__}; download it again.")
    return value


def check_weights_dir(weights_dir) -> None:
    """Raise MissingWeightsError listing every missing file, or UserInputError for the first malformed json file."""
    weights_dir = Path(weights_dir)
    missing, lines, repos, present_json = [], [], [], []
    for requirement in REQUIREMENTS:
        candidates = [weights_dir / requirement.folder / name for name in requirement.names]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            missing.append(candidates[0])
            others = requirement.names[1:]
            lines.append(f"  {candidates[0]}" + (f" (or {', '.join(others)})" if others else ""))
            repos.append(requirement.repo)
        elif requirement.is_json:
            present_json.append(found)
    if missing:
        message = [f"The pretrained weights in {weights_dir} are incomplete; {len(missing)} file(s) missing:",
                   *lines, "Download them with:",
                   *[f"  {download_command(repo, weights_dir)}" for repo in dict.fromkeys(repos)],
                   "For offline tests and the demo, build a tiny random set with the same layout:",
                   "  python -m scripts.make_tiny_weights --out DIR"]
        raise MissingWeightsError("\n".join(message), missing)
    for path in present_json:
        read_json(path)


def load_pretrained(weights_dir, torch_dtype: torch.dtype = torch.float32) -> PretrainedComponents:
    """Load every pretrained component from ``weights_dir`` (local files only), in ``torch_dtype``.

    Checks the whole folder first: MissingWeightsError (a FileNotFoundError) lists every missing file with its
    download command; ValueError names a malformed json file. Modules come back in eval mode.
    """
    weights_dir = Path(weights_dir)
    check_weights_dir(weights_dir)
    diffusers_options = dict(torch_dtype=torch_dtype, local_files_only=True)
    transformers_options = dict(dtype=torch_dtype, local_files_only=True)
    return PretrainedComponents(
        unet=UNet3DConditionModel.from_pretrained(weights_dir / "unet", **diffusers_options),
        vae=AutoencoderKL.from_pretrained(weights_dir / "vae", **diffusers_options),
        clip_text=CLIPTextModel.from_pretrained(weights_dir / "text_encoder", **transformers_options),
        clip_tokenizer=CLIPTokenizer.from_pretrained(weights_dir / "tokenizer", local_files_only=True),
        clip_vision=CLIPVisionTower.from_pretrained(weights_dir / "clip", config=clip_vision_config(
            CLIPConfig.from_pretrained(weights_dir / "clip", local_files_only=True)), **transformers_options),
        roberta=RobertaModel.from_pretrained(weights_dir / "roberta", **transformers_options),
        roberta_tokenizer=AutoTokenizer.from_pretrained(weights_dir / "roberta", local_files_only=True),
    )


COMPONENT_CONFIGS = ("unet", "vae", "text_encoder", "clip", "roberta")


def read_component_configs(config_dir=DEFAULT_CONFIG_DIR) -> dict[str, dict]:
    """The ``config.json`` of each of unet/, vae/, text_encoder/, clip/ and roberta/ in ``config_dir``, by folder."""
    config_dir = Path(config_dir)
    configs = {}
    for name in COMPONENT_CONFIGS:
        path = config_dir / name / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {config_dir} must hold unet/, vae/, text_encoder/, clip/ "
                                    f"and roberta/ config.json files (see configs/pretrained).")
        configs[name] = read_json(path)
    if not isinstance(configs["clip"].get("vision_config"), dict):
        raise UserInputError(f"{config_dir / 'clip' / 'config.json'} must be a CLIPModel config with a 'vision_config' "
                             f"object (the config.json of {CLIP_REPO}).")
    return configs


def build_pretrained_from_configs(configs: dict[str, dict], device="meta", dtype: torch.dtype = torch.float32,
                                  clip_tokenizer: PreTrainedTokenizerBase | None = None,
                                  roberta_tokenizer: PreTrainedTokenizerBase | None = None) -> PretrainedComponents:
    """The pretrained modules of ``configs`` (as :func:`read_component_configs` returns them) with random weights.

    Each module is built directly on ``device`` with its library's initialisation and cast to ``dtype`` before the
    next one is built, so host memory peaks at the final size plus one module in float32. On the meta device
    nothing is allocated. Modules come back in eval mode, like :func:`load_pretrained`'s.
    """
    builders = {
        "unet": lambda: UNet3DConditionModel.from_config(configs["unet"]),
        "vae": lambda: AutoencoderKL.from_config(configs["vae"]),
        "clip_text": lambda: CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"])),
        "clip_vision": lambda: CLIPVisionTower(clip_vision_config(CLIPConfig.from_dict(configs["clip"]))),
        "roberta": lambda: RobertaModel(RobertaConfig.from_dict(configs["roberta"])),
    }
    modules = {}
    for name, build in builders.items():
        with torch.device(device):
            module = build().eval()
        if next(module.parameters()).dtype != dtype:  # diffusers warns on every .to(dtype), even a no-op one
            module.to(dtype=dtype)
        modules[name] = module
    return PretrainedComponents(clip_tokenizer=clip_tokenizer, roberta_tokenizer=roberta_tokenizer, **modules)


def build_pretrained_on_meta(config_dir=DEFAULT_CONFIG_DIR) -> PretrainedComponents:
    """Build the full-size modules from ``config_dir`` on the meta device: no weights, no memory, tokenizers None.

    ``config_dir`` holds unet/, vae/, text_encoder/, clip/ and roberta/ config.json files (the real ones by
    default), so that shapes and parameter counts can be checked without downloading anything.
    """
    return build_pretrained_from_configs(read_component_configs(config_dir))


def parameter_counts(components: PretrainedComponents) -> dict[str, int]:
    """Number of parameters of each module in ``components`` (tokenizers skipped), by field name.

    LoRA adapters that the model injected into a component are not counted: they are not pretrained weights.
    """
    counts = {}
    for field in fields(components):
        module = getattr(components, field.name)
        if isinstance(module, torch.nn.Module):
            counts[field.name] = sum(p.numel() for name, p in module.named_parameters() if "lora_" not in name)
    return counts
