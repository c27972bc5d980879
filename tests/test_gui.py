"""``flatai gui`` driven in a real headless Chromium (Debian's chromium + chromium-driver through
Selenium): upload, flat correction, the before/after view, downloads bit for bit equal to
``Corrector.correct_file``'s, and a corrupt upload beside a good one. With FLATAI_UPDATE_DOCS=1 it refreshes docs/gui.png."""
import io
import os
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
STRENGTH = 0.75  # an option the page passes on (not the default)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
  pytest.skip("needs Debian's chromium and chromium-driver (/usr/bin/chromium, "
              "/usr/bin/chromedriver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium")
pytest.importorskip("fastapi", reason="needs the gui extra (fastapi, uvicorn)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def _frame(path, seed=0, h=200, w=300):
  """A vignetted sky with a gradient, as a FITS file."""
  yy, xx = np.mgrid[0:h, 0:w]
  r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (w / 2)) ** 2
  rng = np.random.default_rng(seed)
  sky = 0.05 + rng.normal(0, 0.001, (h, w))
  fits.PrimaryHDU((sky * (1 - 0.3 * r2) + 0.01 * xx / w).astype(np.float32)).writeto(path)
  return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """Base URL of the app on a free port, served by uvicorn in a thread."""
  from flatai_jax.gui import app as gui_app
  sock = gui_app.bind(0)
  srv = gui_app.make_server(gui_app.create_app(workdir=str(tmp_path_factory.mktemp("gui"))))
  thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.time() + 60
  while not srv.started:
    assert time.time() < deadline and thread.is_alive(), "server did not start"
    time.sleep(0.1)
  yield f"http://127.0.0.1:{sock.getsockname()[1]}"
  srv.should_exit = True
  thread.join(10)


@pytest.fixture(scope="module")
def browser():
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service
  options = Options()
  options.binary_location = str(CHROMIUM)
  for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,860"):
    options.add_argument(arg)
  driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
  yield driver
  driver.quit()


def _get(url) -> bytes:
  with urllib.request.urlopen(url, timeout=60) as r:
    return r.read()


def _upload(browser, *paths):
  """Chooses files through the file input and presses Correct; returns the new job elements."""
  before = len(browser.find_elements(By.CSS_SELECTOR, ".job"))
  browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in paths))
  browser.find_element(By.ID, "start").click()
  WebDriverWait(browser, 30).until(
      lambda d: len(d.find_elements(By.CSS_SELECTOR, ".job")) == before + len(paths))
  return browser.find_elements(By.CSS_SELECTOR, ".job")[before:]


def _finished(browser, jobs, timeout=600):
  WebDriverWait(browser, timeout).until(
      lambda d: all(j.get_attribute("data-status") in ("done", "error") for j in jobs))
  return [j.get_attribute("data-status") for j in jobs]


def test_upload_correct_view_download_and_a_corrupt_file(server, browser, tmp_path):
  from PIL import Image

  import flatai_jax
  from flatai_jax.gui import app as gui_app
  from flatai_jax.io import images
  good = _frame(tmp_path / "frame.fits")
  bad = tmp_path / "broken.fits"
  bad.write_bytes(b"SIMPLE  = this is not a FITS file")
  browser.get(server + "/")
  # the strength slider, set as a user would leave it
  browser.execute_script("const s = document.getElementById('strength'); s.value = arguments[0];"
                         "s.dispatchEvent(new Event('input'));", STRENGTH)
  jobs = _upload(browser, bad, good)  # the bad file first: it must not stop the good one
  assert _finished(browser, jobs) == ["error", "done"]
  message = jobs[0].find_element(By.CSS_SELECTOR, ".msg").text
  assert message.startswith("broken.fits: ") and "FITS" in message, message
  assert "Traceback" not in browser.page_source and "File \"" not in message

  # the same correction through the CLI's code path
  cli = tmp_path / "cli"
  cli.mkdir()
  shutil.copy(good, cli / "frame.fits")
  report = flatai_jax.load().correct_file(cli / "frame.fits", strength=STRENGTH,
                                          print_fn=lambda *a, **k: None)

  # the before/after view shows the corrected preview: the page's after layer is the PNG made
  # from the CLI's corrected file, and it is drawn on the canvas right of the split
  WebDriverWait(browser, 60).until(
      lambda d: d.find_element(By.ID, "canvas").get_attribute("data-after-src"))
  after_src = browser.find_element(By.ID, "canvas").get_attribute("data-after-src")
  served = np.asarray(Image.open(io.BytesIO(_get(server + after_src))))
  corrected = images.read_image(report["outputs"]["corrected"], allow_nan=True)[0]
  expected = np.asarray(Image.open(io.BytesIO(
      gui_app.render_png(gui_app.downsample(corrected), "auto"))))
  np.testing.assert_array_equal(served, expected)
  time.sleep(1.0)  # images decoded and drawn
  shot = np.asarray(Image.open(io.BytesIO(
      browser.find_element(By.ID, "canvas").screenshot_as_png)).convert("L"), np.float64)
  right = shot[:, int(shot.shape[1] * 0.55):int(shot.shape[1] * 0.7)]
  assert right.std() > 3, "no image drawn right of the split"

  # downloads: the links the page offers, bit for bit the CLI's files
  links = {a.get_attribute("data-key"): a.get_attribute("href")
           for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")}
  assert {"corrected", "F", "G", "confidence", "preview", "beforeafter"} <= set(links), links
  for key in ("corrected", "F", "G", "confidence"):
    assert _get(links[key]) == Path(report["outputs"][key]).read_bytes(), key
  pair = Image.open(io.BytesIO(_get(links["beforeafter"])))
  assert pair.size == (2 * 300 + 8, 200)

  # the F tab, then back, and the screenshot for the README
  browser.find_element(By.CSS_SELECTOR, '.tab[data-tab="F"]').click()
  browser.find_element(By.CSS_SELECTOR, '.tab[data-tab="compare"]').click()
  time.sleep(1.0)
  # the README's docs/gui.png is refreshed only on request (a test run leaves the tree clean)
  shot = ROOT / "docs" / "gui.png" if os.environ.get("FLATAI_UPDATE_DOCS") else tmp_path / "gui.png"
  browser.save_screenshot(str(shot))
  assert Image.open(shot).size[0] > 400

  # after the error, the next upload works
  again = _upload(browser, _frame(tmp_path / "second.fits", seed=1))
  assert _finished(browser, again) == ["done"]


def test_bad_options_give_a_readable_error(server, browser):
  browser.get(server + "/")
  browser.find_element(By.ID, "start").click()
  assert "Choose one or more images" in browser.find_element(By.ID, "form-error").text
  status = urllib.request.Request(server + "/api/jobs/nope")
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(status, timeout=30)
  assert e.value.code == 404 and b"no job nope" in e.value.read()


def test_large_frames_reach_the_browser_downsampled():
  """A 6000 × 4000 frame is served as ≤ 1024 px PNGs; a region of it keeps the whole frame's
  display levels."""
  from PIL import Image

  from flatai_jax.gui import app as gui_app
  rng = np.random.default_rng(3)
  frame = (0.1 + 0.01 * rng.standard_normal((4000, 6000, 1))).astype(np.float32)
  preview = gui_app.downsample(frame)
  assert max(preview.shape[:2]) <= gui_app.MAX_SIDE and preview.shape[:2] == (666, 1000)
  for stretch in gui_app.STRETCHES:
    png = Image.open(io.BytesIO(gui_app.render_png(preview, stretch)))
    assert png.size == (1000, 666) and png.mode == "L"
    lv = gui_app.levels(preview, stretch)
    region = gui_app.render_png(gui_app.downsample(frame[:2500, :3000]), stretch, lv)
    assert max(Image.open(io.BytesIO(region)).size) <= gui_app.MAX_SIDE


@pytest.mark.slow
def test_the_physics_psf_correction_and_its_psf_field_tab(server, browser, tmp_path):
  """The "aberrations" model choice runs ``correct_psf.correct_file`` (the CLI's
  ``--task=psf --method=physics``) and the page gets a PSF field tab."""
  from selenium.webdriver.support.ui import Select

  from flatai_jax.config_args import default_config
  from flatai_jax.physics import psf_fit
  rng = np.random.default_rng(0)
  g = np.arange(6) * 40 + 20
  xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + rng.uniform(-2, 2, (36, 2))
  cfg = default_config("psf").degrade.psf
  field = psf_fit.render_stars((240, 240), xy, np.full(36, 3e4), psf_fit.initial_params(), cfg)
  path = tmp_path / "stars.fits"
  fits.PrimaryHDU((field + 10.0 + rng.normal(0, 1.0, field.shape)).astype(np.float32)).writeto(path)
  browser.get(server + "/")
  Select(browser.find_element(By.ID, "model")).select_by_value("physics")
  job, = _upload(browser, path)
  assert _finished(browser, [job]) == ["done"], job.text
  job.click()
  WebDriverWait(browser, 30).until(
      lambda d: d.find_elements(By.CSS_SELECTOR, '.tab[data-tab="psf_field"]'))
  job_id = job.get_attribute("data-id")
  assert _get(f"{server}/api/jobs/{job_id}/image/psf_field.png")[:8] == b"\x89PNG\r\n\x1a\n"
  assert "PSF field from" in job.text
