"""app.py: the Gradio page driven through gradio_client and, where Chromium is installed, in a real browser."""
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

import app  # noqa: E402
from models import build_model  # noqa: E402
from inference.predictor import Predictor  # noqa: E402
from models.pretrained import load_pretrained  # noqa: E402
from tests.cli_help import assert_help_explains_every_flag  # noqa: E402
from util.config import load_config  # noqa: E402
from util.video_io import Mp4Writer, open_video  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "refshapes_tiny.yaml"
SENTENCES = ["the red square", "the blue circle on the right"]
CLIP_LEN, OVERLAP, MAX_FRAMES = 4, 1, 12
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_clip(path: Path, num_frames: int) -> Path:
    """A 48 x 64 mp4: a red square moving right, a blue block still."""
    with Mp4Writer(path, fps=5) as writer:
        for index in range(num_frames):
            frame = np.full((48, 64, 3), 30, dtype=np.uint8)
            frame[10:22, 4 + 3 * index:16 + 3 * index] = (220, 40, 40)
            frame[26:40, 44:58] = (40, 60, 220)
            writer.write(frame)
    return path


@pytest.fixture(scope="module")
def predictor(tiny_weights) -> Predictor:
    torch.manual_seed(0)
    cfg = load_config(CONFIG)
    cfg["weights"] = str(tiny_weights)
    cfg["data"]["test_size"] = cfg["data"]["max_size"] = 32
    return Predictor(build_model(cfg, load_pretrained(tiny_weights))[0], cfg)


@pytest.fixture(scope="module")
def server(predictor, refshapes_root):
    """The app on 127.0.0.1 at a free port, closed after the module's tests."""
    page = app.build_app(predictor, app.example_clips(refshapes_root), CLIP_LEN, OVERLAP, MAX_FRAMES)
    port = free_port()
    page.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_clip(tmp_path_factory.mktemp("app") / "clip.mp4", 7)


def zipped_masks(path: Path, num_sentences: int, names: list[str]) -> np.ndarray:
    """bool [K, T, H, W] from the app's zip."""
    from PIL import Image

    with zipfile.ZipFile(path) as archive:
        return np.stack([np.stack([np.asarray(Image.open(archive.open(f"{k}/{name}.png"))) > 0 for name in names])
                         for k in range(num_sentences)])


def test_upload_gives_the_masks_of_predictor_segment(server, predictor, clip):
    overlay, masks = Client(server, verbose=False).predict(handle_file(str(clip)), None,
                                                           "\n".join(SENTENCES) + "\n\n", api_name="/segment")
    names, frames = zip(*open_video(clip).frames())
    expected = predictor.segment(np.stack(frames), SENTENCES, clip_len=CLIP_LEN, overlap=OVERLAP)
    assert expected.any()  # a mask with foreground somewhere, so that equality means something
    np.testing.assert_array_equal(zipped_masks(Path(masks), 2, list(names)), expected)
    with zipfile.ZipFile(masks) as archive:
        assert sorted(archive.namelist())[-1] == "sentences.json"
    overlay_path = Path(overlay["video"] if isinstance(overlay, dict) else overlay)
    assert open_video(overlay_path).num_frames in (None, 7)
    assert len(list(open_video(overlay_path).frames())) == 7


def test_an_example_clip_is_segmented(server, predictor, refshapes_root):
    video = sorted(app.example_clips(refshapes_root))[0]
    _, masks = Client(server, verbose=False).predict(None, video, SENTENCES[0], api_name="/segment")
    names, frames = zip(*open_video(refshapes_root / "valid" / "JPEGImages" / video).frames())
    expected = predictor.segment(np.stack(frames), SENTENCES[:1], clip_len=CLIP_LEN, overlap=OVERLAP)
    assert expected.any() and not expected.all()  # a mask with both values, so that equality means something
    np.testing.assert_array_equal(zipped_masks(Path(masks), 1, list(names)), expected)


def test_clear_messages_for_bad_inputs(server, clip, tmp_path):
    client = Client(server, verbose=False)
    long_clip = write_clip(tmp_path / "long.mp4", MAX_FRAMES + 1)
    not_video = tmp_path / "notes.mp4"
    not_video.write_bytes(b"this is not a video")
    for inputs, message in (((None, None, "the red square"), "Upload a video"),
                            ((handle_file(str(clip)), None, " \n "), "at least one sentence"),
                            ((handle_file(str(long_clip)), None, "x"), f"limit of {MAX_FRAMES}"),
                            ((handle_file(str(not_video)), None, "x"), "cannot be read as a video")):
        with pytest.raises(Exception, match=message):
            client.predict(*inputs, api_name="/segment")


def test_without_a_checkpoint_the_page_says_how_to_get_one():
    page = app.build_app(None, {})
    texts = [block.value for block in page.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("make demo" in text for text in texts)


def test_help_explains_every_flag(capsys):
    assert_help_explains_every_flag(app.build_parser(), capsys)
    for argv in (["--clip_len", "4", "--overlap", "4"], ["--max_frames", "0"]):
        with pytest.raises(SystemExit):
            app.main(argv)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                                                           "(.ci/run installs them)")
def test_in_a_real_browser(server, clip, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.get(server)
        wait = WebDriverWait(browser, 120)
        upload = wait.until(expected_conditions.presence_of_element_located(
            (By.CSS_SELECTOR, "#input-video input[type=file]")))
        upload.send_keys(str(clip))
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#input-video video")))
        browser.find_element(By.CSS_SELECTOR, "#sentences textarea").send_keys(SENTENCES[0])
        start = time.perf_counter()
        browser.find_element(By.CSS_SELECTOR, "#segment").click()
        result = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#overlay video")))
        wait.until(lambda _: result.get_attribute("src"))
        wait.until(lambda _: browser.execute_script("return arguments[0].readyState", result) >= 1)
        assert browser.execute_script("return arguments[0].duration", result) > 0  # the browser decoded it
        assert browser.find_elements(By.CSS_SELECTOR, "#masks a")  # the zip is offered
        print(f"browser: segmented in {time.perf_counter() - start:.1f} s")
        browser.save_screenshot(str(tmp_path / "app.png"))
    finally:
        browser.quit()
