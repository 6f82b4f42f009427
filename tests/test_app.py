"""demo/app.py, the web demo: its work in-process (bad uploads, AVSS class names), then the
served page in headless Chromium (upload, result, illusion check, error messages).

The model is an untrained SelM with seeded weights, its foreground bias calibrated to half of
the test clip's pixels: every layer between the audio and the masks is active, so its
prediction depends on the sound. A fixture checks that muting changes
the predicted area, so the page's mute check has a difference to show, and the page's numbers
are compared with the predictor's own. CLEVER's Gumbel noise at inference (the authors' and
the configs' default) is turned off here, so that two runs on the same clip agree.

The browser test needs Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``; ``.ci/run`` installs them). Where they are missing it is skipped with the
reason; with ``SELM_REQUIRE_BROWSER_TEST=1`` (set by ``.ci/run``) it fails instead.
"""
import glob
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import REPO_ROOT
from selm_d2.data import AVSClipDatasetMapper
from selm_d2.data.synthetic import generate

sys.path.insert(0, os.path.join(REPO_ROOT, "demo"))
from selm_d2.engine import predictor  # noqa: E402

MS3 = os.path.join(REPO_ROOT, "configs", "synth", "ms3.yaml")
AVSS = os.path.join(REPO_ROOT, "configs", "synth", "avss.yaml")
SERVER_START_S = 120  # import torch + detectron2 + gradio and build the model, on 2 busy cores
RESULT_S = 60
AREA = re.compile(r"Sounding-object area: ([\d.]+) %")
# Config options of every model here: deterministic masks (no Gumbel noise at inference).
OPTS = ["MODEL.SELM.CLEVER.INFERENCE_NOISE", "False"]


def _unavailable(reason):
    if os.environ.get("SELM_REQUIRE_BROWSER_TEST") == "1":
        pytest.fail(reason + " (SELM_REQUIRE_BROWSER_TEST=1: this run must test the web demo)")
    pytest.skip(reason)


def _require_app_extra():
    for module in ("gradio", "imageio_ffmpeg"):
        if importlib.util.find_spec(module) is None:
            _unavailable("{} is not installed: pip install -e '.[app]'".format(module))


def _ffmpeg(*args):
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", "-nostdin"] + list(args), check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Two generated 5 s MS3-layout clips at 64x64 and test files made from the first:

    "frames", "wav" (clip 0), "other_wav" (clip 1), "video" (clip 0 as a lossless .mov with its
    sound, so the page sees exactly the frames and samples the predictor sees) and
    "silent_video" (the same frames, no audio track).
    """
    _require_app_extra()
    root = tmp_path_factory.mktemp("app_synth")
    generate(str(root), layouts=("ms3",), clips_per_split={"train": 0, "val": 0, "test": 2}, size=64,
             seed=1, progress=False)
    data = os.path.join(str(root), "Multi-sources", "ms3_data")
    folders = sorted(glob.glob(os.path.join(data, "visual_frames", "*")))
    frames = predictor.list_frames(folders[0])
    wav, other_wav = (os.path.join(data, "audio_wav", "test", os.path.basename(f) + ".wav") for f in folders)
    pattern = frames[0].replace("_1.png", "_%d.png")  # AVSBench frames: <clip>_1.png ... <clip>_5.png
    video, silent = str(root / "clip.mov"), str(root / "silent.mp4")
    _ffmpeg("-framerate", "1", "-start_number", "1", "-i", pattern, "-i", wav, "-c:v", "libx264rgb", "-qp", "0",
            "-pix_fmt", "bgr24", "-c:a", "pcm_s16le", video)
    _ffmpeg("-framerate", "1", "-start_number", "1", "-i", pattern, "-c:v", "libx264", "-pix_fmt", "yuv420p", silent)
    return {"root": root, "frames": frames, "wav": wav, "other_wav": other_wav, "video": video,
            "silent_video": silent}


def _random_weights(config, path, calibration_clip=None, seed=0):
    """A checkpoint of the config's untrained model with seeded weights, as train_net.py writes it.

    With a `calibration_clip` (binary model), the bias of the foreground logit (the last
    output of CLEVER's dynamic projector, PROJECTOR_BIAS) is set so that half of that clip's
    pixels are foreground: a random model's masks are otherwise often all or nothing, whatever
    the sound, and the mute check would have nothing to show.
    """
    torch.manual_seed(seed)
    cfg = predictor.setup_cfg(config, OPTS)
    model = build_model(cfg)
    if calibration_clip is not None:
        model.eval()
        with torch.no_grad():
            clip = AVSClipDatasetMapper(cfg, is_train=False)(calibration_clip)
            fg = model([clip])[0]["sem_seg"][:, 1].clamp(1e-6, 1 - 1e-6)
            model.sem_seg_head.clever.projector.audio_linear.bias[-1] -= torch.logit(fg.median())
    folder, name = os.path.split(os.path.splitext(path)[0])
    DetectionCheckpointer(model, save_dir=folder).save(name)
    return path


@pytest.fixture(scope="module")
def ms3_weights(clips):
    return _random_weights(MS3, str(clips["root"] / "ms3_model.pth"),
                           predictor.clip_dict(clips["frames"], clips["wav"]))


def _app(config, weights):
    import app

    return app.SelMApp(predictor.setup_cfg(config, OPTS + ["MODEL.WEIGHTS", weights], hit_maps=True))


@pytest.fixture(scope="module")
def ms3_app(ms3_weights):
    return _app(MS3, ms3_weights)


def _expect_error(selm_app, message, video=None, frames=None, audio=None):
    status, results = selm_app.run(video, frames, audio, False, None)
    assert results == {}
    assert status.startswith("**Could not segment this upload.**") and message in status, status


def test_bad_uploads_get_a_message(ms3_app, clips, tmp_path):
    frames, wav = clips["frames"], clips["wav"]
    _expect_error(ms3_app, "Upload a video with sound, or frames")
    _expect_error(ms3_app, "not both", video=clips["video"], frames=frames, audio=wav)
    _expect_error(ms3_app, "silent.mp4 has no audio track", video=clips["silent_video"])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    _expect_error(ms3_app, "Cannot read the frames of junk.mp4", video=str(junk))
    _expect_error(ms3_app, "Cannot read junk.mp4 as video or audio", frames=frames, audio=str(junk))
    short = str(tmp_path / "short.wav")
    sf.write(short, np.zeros(8000, np.float32), 16000)  # 0.5 s
    _expect_error(ms3_app, "short.wav has 0.50 s of sound; the demo needs at least 1 s", frames=frames, audio=short)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    _expect_error(ms3_app, "Cannot read frame broken.png", frames=[str(broken)] + frames[1:], audio=wav)
    wide = str(tmp_path / "wide.png")
    Image.new("RGB", (80, 64)).save(wide)
    _expect_error(ms3_app, "Frame wide.png is 80x64 but the first frame is 64x64",
                  frames=frames[:4] + [wide], audio=wav)


def test_a_short_clip_is_padded_and_only_its_own_seconds_are_shown_with_progress(ms3_app, clips, tmp_path):
    short = str(tmp_path / "three_seconds.wav")
    samples, rate = sf.read(clips["wav"])
    sf.write(short, samples[:3 * rate], rate)
    steps = []
    status, results = ms3_app.run(None, clips["frames"][:3], short, True, None,
                                  progress=lambda fraction, desc: steps.append(desc))
    assert status.startswith("Segmented 3 s of three_seconds.wav"), status
    assert steps == ["Reading the upload", "Segmenting: with its sound", "Segmenting: muted (silence)"]
    assert set(results) == {"sound", "muted"}
    for result in results.values():
        assert len(re.search(r"per second: ([^%]*) %", result["summary"]).group(1).split(", ")) == 3
        video = cv2.VideoCapture(result["video"])
        assert video.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and video.get(cv2.CAP_PROP_FPS) == 1


def test_avss_model_names_the_classes_present(clips, tmp_path):
    avss_app = _app(AVSS, _random_weights(AVSS, str(tmp_path / "avss_model.pth")))
    status, results = avss_app.run(None, clips["frames"], clips["wav"], False, None)
    # a 5 s clip for a 10-frame model: padded by the mapper, only its 5 seconds are drawn
    assert status.startswith("Segmented 5 s"), status
    summary = results["sound"]["summary"]
    named = re.search(r"Classes present: (.*)", summary).group(1)
    classes = avss_app.metadata.stuff_classes
    assert named != "none" and all(name.rsplit(" (", 1)[0] in classes[1:] for name in named.split(", ")), summary


# ----------------------------------------------------------------------------------------------
# The page in a browser


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ms3_weights, clips):
    """`python demo/app.py` on a free localhost port (uploads limited to 1 MB); its URL."""
    port = _free_port()
    log_path = str(clips["root"] / "server.log")
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "demo", "app.py"), "--config-file", MS3,
                                 "--port", str(port), "--max-upload-mb", "1", "--examples", "0",
                                 "--opts", "MODEL.WEIGHTS", ms3_weights] + OPTS,
                                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:{}/".format(port)
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            if proc.poll() is not None or time.time() > deadline:
                with open(log_path) as f:
                    pytest.fail("demo/app.py did not serve {} (exit code {}):\n{}".format(
                        url, proc.poll(), f.read()[-3000:]))
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, with the system's browser and driver only."""
    if importlib.util.find_spec("selenium") is None:
        _unavailable("selenium is not installed: pip install -e '.[dev]'")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        _unavailable("Chromium and its driver are not installed: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d), "timed out waiting for " + what)


def _text(driver, elem_id):
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def _upload(driver, elem_id, path, uploaded_css):
    """Give a file to the upload box `elem_id`; wait until the page shows it (`uploaded_css`)."""
    from selenium.webdriver.common.by import By

    field = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#{} input[type=file]".format(elem_id)), 30,
                  "the upload box " + elem_id)
    field[0].send_keys(path)
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#{} {}".format(elem_id, uploaded_css)), 30,
          "the upload of " + os.path.basename(path))


def _area(predictor_, clip):
    return "{:.2f}".format(100 * predictor_(clip)["sem_seg_labels"].float().mean().item())


@pytest.mark.slow
@pytest.mark.browser
def test_page_segments_a_clip_and_the_illusion_check_changes_the_mask(browser, server, clips, ms3_weights,
                                                                     tmp_path):
    from selenium.webdriver.common.by import By

    # What the page must show, from the predictor itself; muting must change it.
    direct = predictor.AVSPredictor(predictor.setup_cfg(MS3, OPTS + ["MODEL.WEIGHTS", ms3_weights]))
    clip = predictor.clip_dict(clips["frames"], clips["wav"])
    expected = {"sound": _area(direct, clip), "muted": _area(direct, dict(clip, audio_override="silence"))}
    assert expected["sound"] != expected["muted"], "the test model's masks must depend on the sound"

    browser.get(server)
    _upload(browser, "video-input", clips["video"], "video")
    _upload(browser, "swap-input", clips["other_wav"], "audio")
    browser.find_element(By.CSS_SELECTOR, "#mute input").click()
    browser.find_element(By.ID, "run").click()
    for name in ("sound", "muted", "swapped"):
        _wait(browser, lambda d: AREA.search(_text(d, name + "-summary")), RESULT_S, "the {} result".format(name))
    assert _text(browser, "status").startswith("Segmented 5 s of clip.mov")
    for name in ("sound", "muted", "swapped"):
        # a playable overlay video of the clip's 5 seconds, and the per-second strip
        duration = _wait(browser, lambda d: d.execute_script(
            "const v = document.querySelector(arguments[0]); return v && v.readyState >= 1 ? v.duration : null;",
            "#{}-video video".format(name)), 30, "the {} overlay video".format(name))
        assert abs(duration - 5) < 0.1, (name, duration)
        assert browser.execute_script("const i = document.querySelector(arguments[0]); return i && i.naturalWidth;",
                                      "#{}-strip img".format(name)) > 0
    browser.save_screenshot(str(tmp_path / "results_page.png"))  # kept by pytest, to look at
    shown = {name: AREA.search(_text(browser, name + "-summary")).group(1) for name in ("sound", "muted")}
    assert shown == expected and shown["sound"] != shown["muted"]


@pytest.mark.slow
@pytest.mark.browser
def test_page_shows_why_an_upload_is_refused(browser, server, clips, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _upload(browser, "video-input", clips["silent_video"], "video")
    browser.find_element(By.ID, "run").click()
    _wait(browser, lambda d: "has no audio track" in _text(d, "status"), RESULT_S, "the error message")
    assert "silent.mp4 has no audio track" in _text(browser, "status")
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text

    # over --max-upload-mb: gradio refuses the upload and says so
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(1536 * 1024))
    browser.get(server)
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#video-input input[type=file]"), 30,
          "the upload box")[0].send_keys(str(big))
    _wait(browser, lambda d: "exceed the maximum allowed size" in d.find_element(By.TAG_NAME, "body").text, 30,
          "the upload-size message")
