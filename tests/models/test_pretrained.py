"""Pretrained components: the tiny offline set, load_pretrained, its errors, and the full-size meta build."""
import json
import os
import shutil
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPTokenizer,
                          CLIPVisionModelWithProjection, RobertaModel)

from models.pretrained import (MissingWeightsError, build_pretrained_on_meta, check_weights_dir, load_pretrained,
                               parameter_counts)
from scripts import make_tiny_weights
from testing.tiny_weights import build_tiny_weights

REPO_ROOT = Path(__file__).resolve().parents[2]
LAYOUT = {
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"),
    "scheduler": ("scheduler_config.json",),
    "clip": ("config.json", "model.safetensors", "preprocessor_config.json", "vocab.json", "merges.txt"),
    "roberta": ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                "tokenizer_config.json"),
}
SENTENCES = ["a red circle moving up", "The small purple Diamond that moves downwards",
             "the triangle to the left of the blue square", "naïve café: 3 dogs, 12 cats"]


def linked_copy(source: Path, target: Path) -> Path:
    """A copy of the tiny set made of symlinks, cheap to break file by file."""
    shutil.copytree(source, target, copy_function=os.symlink)
    return target


def replace_file(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text, encoding="utf-8")


def weights_files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*.safetensors"))}


def test_tiny_set_has_the_real_layout_and_is_small(tiny_weights):
    for folder, names in LAYOUT.items():
        for name in names:
            assert (tiny_weights / folder / name).is_file(), f"{folder}/{name}"
    total = sum(path.stat().st_size for path in tiny_weights.rglob("*") if path.is_file())
    assert total < 50 * 2**20
    assert not [path for path in tiny_weights.parent.iterdir() if ".partial-" in path.name]


def test_each_component_loads_with_its_own_library(tiny_weights):
    unet = UNet3DConditionModel.from_pretrained(tiny_weights / "unet")
    assert [type(block).__name__ for block in unet.down_blocks] == ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
    assert [type(block).__name__ for block in unet.up_blocks] == ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3
    assert type(unet.transformer_in).__name__ == "TransformerTemporalModel"
    text_encoder = CLIPTextModel.from_pretrained(tiny_weights / "text_encoder")
    assert unet.config.cross_attention_dim == text_encoder.config.hidden_size
    latents = torch.randn(2, 4, 4, 16, 16)  # [B, C, T, H/8, W/8] for 2 clips of 4 frames at 128x128
    with torch.no_grad():
        sample = unet(latents, torch.zeros(2), torch.randn(2, 77, text_encoder.config.hidden_size)).sample
    assert sample.shape == latents.shape and torch.isfinite(sample).all()

    vae = AutoencoderKL.from_pretrained(tiny_weights / "vae")
    with torch.no_grad():
        assert vae.encode(torch.randn(1, 3, 128, 128)).latent_dist.mean.shape == (1, 4, 16, 16)
    assert vae.config.scaling_factor == pytest.approx(0.18215)

    scheduler = DDIMScheduler.from_pretrained(tiny_weights / "scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.num_train_timesteps == 1000
    assert scheduler.betas[0].item() == pytest.approx(0.00085) and scheduler.betas[-1].item() == pytest.approx(0.012)

    vision = CLIPVisionModelWithProjection.from_pretrained(tiny_weights / "clip")
    full_clip = CLIPModel.from_pretrained(tiny_weights / "clip")
    torch.testing.assert_close(vision.visual_projection.weight, full_clip.visual_projection.weight)
    processor = CLIPImageProcessor.from_pretrained(tiny_weights / "clip")
    pixels = processor(images=[torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)], return_tensors="pt")
    with torch.no_grad():
        tokens = vision(pixel_values=pixels.pixel_values).last_hidden_state
    assert tokens.shape == (1, 17, vision.config.hidden_size)

    roberta = RobertaModel.from_pretrained(tiny_weights / "roberta")
    roberta_tokenizer = AutoTokenizer.from_pretrained(tiny_weights / "roberta")
    assert roberta.pooler is not None and roberta.config.vocab_size == len(roberta_tokenizer)
    batch = roberta_tokenizer(SENTENCES, padding="longest", return_tensors="pt")
    with torch.no_grad():
        words = roberta(**batch).last_hidden_state
    assert words.shape == (len(SENTENCES), batch.input_ids.shape[1], roberta.config.hidden_size)


def test_load_pretrained_gives_the_same_modules_as_the_libraries(tiny_weights):
    components = load_pretrained(tiny_weights)
    expected = {
        "unet": UNet3DConditionModel.from_pretrained(tiny_weights / "unet"),
        "vae": AutoencoderKL.from_pretrained(tiny_weights / "vae"),
        "clip_text": CLIPTextModel.from_pretrained(tiny_weights / "text_encoder"),
        "clip_vision": CLIPVisionModelWithProjection.from_pretrained(tiny_weights / "clip"),
        "roberta": RobertaModel.from_pretrained(tiny_weights / "roberta"),
    }
    for name, module in expected.items():
        loaded = getattr(components, name)
        assert isinstance(loaded, type(module)) and not loaded.training
        torch.testing.assert_close(loaded.state_dict(), module.state_dict(), rtol=0, atol=0)
    assert parameter_counts(components) == {name: sum(p.numel() for p in module.parameters())
                                            for name, module in expected.items()}
    clip_ids = components.clip_tokenizer(SENTENCES[0], padding="max_length", max_length=77).input_ids
    assert clip_ids == CLIPTokenizer.from_pretrained(tiny_weights / "tokenizer")(
        SENTENCES[0], padding="max_length", max_length=77).input_ids
    roberta_ids = components.roberta_tokenizer(SENTENCES[1]).input_ids
    assert roberta_ids[0] == 0 and roberta_ids[-1] == 2
    assert components.roberta_tokenizer.decode(roberta_ids, skip_special_tokens=True) == SENTENCES[1]

    half = load_pretrained(tiny_weights, torch_dtype=torch.bfloat16)
    assert {module.dtype for module in (half.unet, half.vae, half.clip_text, half.clip_vision, half.roberta)} == \
        {torch.bfloat16}


def test_clip_vision_takes_the_projection_width_of_the_clip_model(tiny_weights, tmp_path):
    """A CLIPModel config may leave vision_config.projection_dim at the default 512: the checkpoint decides."""
    weights = linked_copy(tiny_weights, tmp_path / "weights")
    config = json.loads((tiny_weights / "clip" / "config.json").read_text())
    config["vision_config"]["projection_dim"] = 512
    replace_file(weights / "clip" / "config.json", json.dumps(config))
    vision = load_pretrained(weights).clip_vision
    assert vision.visual_projection.weight.shape == (config["projection_dim"], config["vision_config"]["hidden_size"])


def test_clip_tokenizer_files_reproduce_open_clip(tiny_weights):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_weights / "tokenizer")
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    reference = open_clip.get_tokenizer("ViT-H-14")
    for sentence in SENTENCES:
        ids = tokenizer(sentence, padding="max_length", max_length=77, truncation=True).input_ids
        assert ids == reference(sentence)[0].tolist(), sentence
    assert tokenizer("a red circle moving up").input_ids == [49406, 320, 736, 7117, 3584, 705, 49407]


def test_roberta_tokenizer_has_roberta_special_tokens(tiny_weights):
    tokenizer = AutoTokenizer.from_pretrained(tiny_weights / "roberta")
    assert tokenizer.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, 4]
    batch = tokenizer(["the red circle", "the big blue square moving left"], padding="longest")
    assert batch.input_ids[0][-1] == 1 and batch.attention_mask[0][-1] == 0  # padded with <pad>, masked out
    assert len(tokenizer.tokenize(" circle")) == 1  # a corpus word is one token


def test_script_and_seed_give_identical_files(tiny_weights, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["make_tiny_weights.py", "--out", str(tmp_path / "again"), "--seed", "0"])
    make_tiny_weights.main()
    again = tmp_path / "again"
    assert sorted(p.relative_to(again) for p in again.rglob("*")) == \
        sorted(p.relative_to(tiny_weights) for p in tiny_weights.rglob("*"))
    assert weights_files(again) == weights_files(tiny_weights)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_tiny_weights(tmp_path / "other", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    other = weights_files(tmp_path / "other")
    assert other.keys() == weights_files(tiny_weights).keys()
    assert all(other[name] != content for name, content in weights_files(tiny_weights).items())


def test_build_refuses_a_non_empty_folder_and_a_negative_seed(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="full"):
        build_tiny_weights(tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="seed"):
        build_tiny_weights(tmp_path / "new", seed=-1)
    assert not (tmp_path / "new").exists()


def test_missing_files_are_all_listed_with_their_download_commands(tiny_weights, tmp_path):
    weights = linked_copy(tiny_weights, tmp_path / "weight")
    (weights / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (weights / "roberta" / "vocab.json").unlink()
    shutil.rmtree(weights / "clip")
    with pytest.raises(MissingWeightsError) as caught:
        load_pretrained(weights)
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    assert error.missing == [weights / "unet" / "diffusion_pytorch_model.safetensors",
                             weights / "clip" / "config.json", weights / "clip" / "model.safetensors",
                             weights / "roberta" / "vocab.json"]
    message = str(error)
    for path in error.missing:
        assert str(path) in message
    assert "diffusion_pytorch_model.bin" in message  # the accepted alternative
    assert f"huggingface-cli download --resume-download ali-vilab/text-to-video-ms-1.7b --local-dir {weights}" \
        in message
    assert f"hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir {weights / 'clip'}" in message
    assert f"huggingface-cli download --resume-download roberta-base --local-dir {weights / 'roberta'}" in message
    assert "python -m scripts.make_tiny_weights --out DIR" in message

    with pytest.raises(MissingWeightsError) as caught:
        load_pretrained(tmp_path / "nothing")
    assert len(caught.value.missing) == 15


def test_pytorch_bin_weights_are_accepted_in_place_of_safetensors(tiny_weights, tmp_path):
    """RoBERTa stored as pytorch_model.bin (older downloads) passes the check and loads to the same weights."""
    weights = linked_copy(tiny_weights, tmp_path / "weight")
    reference = load_pretrained(tiny_weights).roberta.state_dict()
    (weights / "roberta" / "model.safetensors").unlink()
    shifted = {name: tensor + 1.0 if tensor.is_floating_point() else tensor for name, tensor in reference.items()}
    torch.save(shifted, weights / "roberta" / "pytorch_model.bin")
    check_weights_dir(weights)
    loaded = load_pretrained(weights).roberta.state_dict()
    assert loaded.keys() == reference.keys()
    for name, tensor in shifted.items():  # the .bin's values, not the safetensors' ones
        assert torch.equal(loaded[name], tensor), name


def test_malformed_config_names_the_file(tiny_weights, tmp_path):
    weights = linked_copy(tiny_weights, tmp_path / "weight")
    replace_file(weights / "vae" / "config.json", '{"block_out_channels": [16, 32,')
    with pytest.raises(ValueError, match=r"vae/config\.json is not valid json"):
        load_pretrained(weights)

    configs = linked_copy(REPO_ROOT / "configs" / "pretrained", tmp_path / "configs")
    replace_file(configs / "roberta" / "config.json", "[]")
    with pytest.raises(ValueError, match=r"roberta/config\.json must hold a json object"):
        build_pretrained_on_meta(configs)


def test_full_size_configs_build_on_meta_with_the_paper_sizes():
    components = build_pretrained_on_meta()
    counts = parameter_counts(components)
    assert counts["unet"] == 1_411_233_860 and round(counts["unet"] / 1e9, 3) == 1.411
    assert counts["roberta"] == 124_645_632 and round(counts["roberta"] / 1e6, 1) == 124.6  # with the pooler
    assert components.clip_text.config.hidden_size == 1024 and components.clip_text.config.num_hidden_layers == 23
    vision = components.clip_vision
    assert vision.config.hidden_size == 1280
    assert vision.vision_model.embeddings.position_embedding.num_embeddings == 257  # 16x16 patches + class token
    assert vision.visual_projection.weight.shape == (1024, 1280)
    assert list(components.unet.config.block_out_channels) == [320, 640, 1280, 1280]
    assert components.vae.config.scaling_factor == pytest.approx(0.18215)
    assert components.clip_tokenizer is None and components.roberta_tokenizer is None
    assert all(p.is_meta for name in counts for p in getattr(components, name).parameters())
