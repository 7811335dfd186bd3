"""A tiny, seeded, randomly initialised set of HCD's pretrained components in the layout of ``weight/``.

Every component is the class the real download holds, saved with its library's ``save_pretrained``
(safetensors), so that all loading paths run offline. The shapes keep the real structure (four UNet
levels with CrossAttn blocks and the temporal ``transformer_in``, a four-level VAE with latent 4 and
stride 8, CLIP towers, RoBERTa with its pooler) but are small enough to train the demo on a CPU.
The tokenizers are real: CLIP's 49,408-token BPE rebuilt from the vocabulary file that open_clip ships,
and a small byte-level BPE for RoBERTa trained on a built-in corpus about shapes, colours and motion.
"""
import gzip
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from diffusers.models.resnet import TemporalConvLayer
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from tokenizers import ByteLevelBPETokenizer
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel,
                          RobertaConfig, RobertaModel, RobertaTokenizer)

from util.atomic_write import atomic_directory

CLIP_VOCAB_SIZE = 49408
CLIP_MAX_TOKENS = 77
CLIP_NUM_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # bytes, bytes + "</w>", merges, two special tokens
TEXT_HIDDEN = 32  # ModelScope text encoder width = the UNet's cross_attention_dim
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8  # 32 / 8 = 4x4 patches + the class token = 17 image tokens
ROBERTA_TARGET_VOCAB = 2000
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0-4, as in roberta-base

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    block_out_channels=(32, 64, 64, 64), layers_per_block=1, norm_num_groups=8,
    cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8,
)
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 32, 32), layers_per_block=1, norm_num_groups=8, sample_size=128,
    scaling_factor=0.18215,
)
# Special-token ids as in ModelScope's text_encoder/config.json (bos 0, eos 2: transformers' legacy pooling).
TEXT_ENCODER_CONFIG = dict(
    vocab_size=CLIP_VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=CLIP_MAX_TOKENS, hidden_act="gelu", projection_dim=32,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
CLIP_PROJECTION_DIM = 32
CLIP_TEXT_CONFIG = dict(
    vocab_size=CLIP_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
    max_position_embeddings=CLIP_MAX_TOKENS, hidden_act="gelu", projection_dim=CLIP_PROJECTION_DIM,
)
CLIP_VISION_CONFIG = dict(
    hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, hidden_act="gelu", projection_dim=CLIP_PROJECTION_DIM,
)
ROBERTA_CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, bos_token_id=0, eos_token_id=2,
    pad_token_id=1,
)
# The scheduler of ali-vilab/text-to-video-ms-1.7b (kept for the layout; HCD adds no noise).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "white", "black", "brown", "grey")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "rectangle", "ball", "box")
MOTIONS = ("moving up", "moving down", "moving left", "moving right", "going up", "going down",
           "staying still", "that does not move", "that moves upwards", "that moves downwards",
           "going to the left", "going to the right", "standing still", "jumping", "rolling", "sliding")
RELATIONS = ("left of", "right of", "above", "below", "under", "next to", "behind", "in front of")
GENERAL_SENTENCES = (
    "a person is walking a dog along the river in the morning",
    "the man on the left is holding a white umbrella",
    "a woman in a red dress is dancing on the stage",
    "two cats are playing with a ball of yarn on the floor",
    "the car that drives fastest overtakes the truck",
    "a small bird flies away from the tree",
    "the boy throws the ball to his friend who catches it",
    "a horse is running across the field while people watch",
    "the skateboarder jumps over the ramp and lands smoothly",
    "an elephant walks slowly behind its mother",
    "the first giraffe eats leaves from the tallest tree",
    "a surfer rides a large wave near the beach",
    "the last person in the line is wearing a black hat",
    "a fish swims quickly between the rocks",
    "the player kicks the ball into the goal",
)


def clip_bpe() -> tuple[list[str], list[str]]:
    """CLIP's vocabulary (49,408 tokens, in id order) and its 48,894 merges, from open_clip's BPE file.

    The construction is CLIP's: the 256 byte symbols, the same with "</w>", one token per merge, then
    <|startoftext|> and <|endoftext|>.
    """
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1:1 + CLIP_NUM_MERGES]  # line 0 is the file's version header
    byte_symbols = list(bytes_to_unicode().values())
    vocab = (byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
             + ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"])
    return vocab, merges


def write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """CLIPTokenizer files (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe()
    _write_json(folder / "vocab.json", {token: index for index, token in enumerate(vocab)})
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special_tokens = dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                          pad_token=pad_token)
    _write_json(folder / "special_tokens_map.json", special_tokens)
    _write_json(folder / "tokenizer_config.json", dict(**special_tokens, model_max_length=CLIP_MAX_TOKENS,
                                                       do_lower_case=True, tokenizer_class="CLIPTokenizer"))


def roberta_corpus() -> list[str]:
    """Built-in training sentences for the tiny RoBERTa tokenizer: referring expressions and general English."""
    sentences = list(GENERAL_SENTENCES)
    for colour in COLOURS:
        for shape in SHAPES:
            sentences.append(f"the {colour} {shape}")
            sentences += [f"the small {colour} {shape} {motion}" for motion in MOTIONS[:4]]
            sentences += [f"the big {colour} {shape} {motion}" for motion in MOTIONS[4:]]
    for relation in RELATIONS:
        for shape in SHAPES:
            sentences.append(f"the {shape} {relation} the {COLOURS[len(shape) % len(COLOURS)]} object")
    sentences += [f"the leftmost {shape}, the rightmost {shape}, the highest {shape} and the lowest {shape}"
                  for shape in SHAPES]
    # Every word of RefShapes' sentences (datasets/refshapes.py), several times, so that each is one token.
    for noun in ("shape", "object"):
        for size in ("small", "little", "big", "large"):
            sentences += [f"the {size} {noun} furthest to the left", f"the topmost {size} {noun}",
                          f"the bottommost {size} {noun} at the bottom", f"the {size} {noun} at the top",
                          f"the {size} {noun} to the right of the {noun} under the {noun}"]
    return sentences


def write_roberta_tokenizer(folder: Path) -> int:
    """Train a byte-level BPE on ``roberta_corpus`` and save it as a RoBERTa tokenizer; returns its vocab size."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(roberta_corpus(), vocab_size=ROBERTA_TARGET_VOCAB, min_frequency=2,
                            special_tokens=list(ROBERTA_SPECIAL_TOKENS), show_progress=False)
    bpe.save_model(str(folder))  # vocab.json and merges.txt, the files roberta-base ships
    tokenizer = RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)  # tokenizer.json and tokenizer_config.json
    return len(tokenizer)


def build_tiny_weights(out_dir, seed: int = 0) -> None:
    """Write out_dir/{unet,vae,text_encoder,tokenizer,scheduler,clip,roberta}: tiny, random, seeded.

    ``out_dir`` must be absent or empty. The set is written in a temporary sibling folder and renamed into
    place, so ``out_dir`` is either complete or untouched. The same seed gives byte-identical files; the
    caller's torch random state is left as it was. Raises ValueError for a negative seed and FileExistsError
    if ``out_dir`` is not empty.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    with atomic_directory(out_dir) as staging:
        _write_components(staging, seed)


def build_tiny_unet() -> UNet3DConditionModel:
    """The tiny UNet, with non-zero temporal convolutions like the trained ModelScope UNet's.

    diffusers zero-initialises the last convolution of every ``TemporalConvLayer``, so that a new video UNet
    starts as its image UNet. Frozen like that, the tiny UNet would be blind to frame order: its temporal
    attention has no position embedding, so the features of a reversed clip would be the reversed features
    and nothing downstream could tell "moving left" from "moving right". The trained UNet's temporal
    convolutions are not zero; here they get PyTorch's default convolution initialisation.
    """
    unet = UNet3DConditionModel(**UNET_CONFIG)
    for module in unet.modules():
        if isinstance(module, TemporalConvLayer):
            module.conv4[-1].reset_parameters()
    return unet


def _write_components(root: Path, seed: int) -> None:
    write_clip_tokenizer(root / "tokenizer", pad_token="!")  # ModelScope pads with id 0, as open_clip does
    (root / "roberta").mkdir()
    roberta_vocab_size = write_roberta_tokenizer(root / "roberta")
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    clip_config = CLIPConfig(text_config=CLIP_TEXT_CONFIG, vision_config=CLIP_VISION_CONFIG,
                             projection_dim=CLIP_PROJECTION_DIM)
    builders = {
        "unet": build_tiny_unet,
        "vae": lambda: AutoencoderKL(**VAE_CONFIG),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG)),
        "clip": lambda: CLIPModel(clip_config),
        "roberta": lambda: RobertaModel(RobertaConfig(vocab_size=roberta_vocab_size, **ROBERTA_CONFIG)),
    }
    for offset, (name, build) in enumerate(builders.items()):
        # One seed per component, so that changing one component's shape leaves the others' weights alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * len(builders) + offset)
            build().save_pretrained(root / name, safe_serialization=True)
    write_clip_tokenizer(root / "clip", pad_token="<|endoftext|>")  # laion's CLIP folder ships its tokenizer
    CLIPImageProcessor(size={"shortest_edge": CLIP_IMAGE_SIZE},
                       crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE}).save_pretrained(root / "clip")


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
