"""``flatai gui``: a local web app (FastAPI + uvicorn, bound to 127.0.0.1) around the same
``Corrector.correct_file`` as ``flatai correct``.

Uploads go to a working folder, one job per file; a single worker thread corrects them in
turn (one model in memory, one JAX computation at a time) and records the progress the
correction reports. The page (``static/index.html`` + ``static/app.js``) polls
``/api/jobs/{id}`` and shows the written files through downsampled, display-stretched
PNGs (``/api/jobs/{id}/image/{kind}.png``, ≤ ``MAX_SIDE`` px, of the whole frame or of a
region for zooming in), so a 6000 × 4000 frame never travels to the browser whole.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import queue
import re
import socket
import tempfile
import threading
import traceback
import uuid
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC = Path(__file__).resolve().parent / "static"
MAX_SIDE = 1024  # previews and regions are served at most this many px per side
STRETCHES = ("linear", "asinh", "auto")
KINDS = ("input", "corrected", "F", "G", "confidence", "psf_field")  # views; output keys but input
PHYSICS = "physics"  # the model choice of `flatai correct --task=psf --method=physics` (no model)
MODELS = {"default": None, "tile": "TILE_MODEL"}  # shipped models by name (correct.py)


@dataclasses.dataclass
class Job:
  """One uploaded file and its correction."""
  id: str
  name: str
  input: Path
  options: dict
  status: str = "queued"  # queued | running | done | error
  done: int = 0
  total: int = 0
  message: str = ""
  notes: list = dataclasses.field(default_factory=list)
  outputs: dict = dataclasses.field(default_factory=dict)  # key → Path
  shape: tuple = (0, 0)  # H, W of the frame
  previews: dict = dataclasses.field(default_factory=dict)  # kind → (H', W', C) array

  def public(self) -> dict:
    """The job as ``/api/jobs/{id}`` returns it."""
    return {"id": self.id, "name": self.name, "status": self.status, "done": self.done,
            "total": self.total, "message": self.message, "notes": self.notes,
            "shape": list(self.shape),
            "outputs": {k: {"file": p.name, "url": f"/api/jobs/{self.id}/files/{k}"}
                        for k, p in self.outputs.items()},
            "views": [k for k in KINDS if k == "input" or k in self.outputs]}


# --- display: downsampling and stretches (applied to the view only) ----------------------------


def downsample(a: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
  """``(H, W, C)`` → block mean to at most ``max_side`` px per side, NaN as the median."""
  from flatai_jax import correct
  return correct._preview_size(correct._nan_to_median(np.asarray(a, np.float32)), max_side)


def levels(preview: np.ndarray, stretch: str) -> dict:
  """Display levels of a stretch, taken from the whole frame's preview (so regions match)."""
  x = preview.astype(np.float64)
  if stretch == "linear":
    return {"black": float(np.percentile(x, 0.1)), "white": float(np.percentile(x, 99.9))}
  if stretch == "asinh":
    return {"black": float(np.percentile(x, 0.5)), "white": float(np.percentile(x, 99.9))}
  # auto: PixInsight-style screen transfer — shadows at median − 2.8 MAD, median to 0.25
  med = float(np.median(x))
  mad = 1.4826 * float(np.median(np.abs(x - med)))
  black, white = med - 2.8 * mad, float(x.max())
  span = max(white - black, 1e-12)
  m = float(np.clip((med - black) / span, 1e-6, 1 - 1e-6))
  midtones = m * (1 - 0.25) / (m * (1 - 2 * 0.25) + 0.25)  # mtf(midtones, m) = 0.25
  return {"black": black, "white": white, "midtones": midtones}


def apply_stretch(a: np.ndarray, stretch: str, lv: dict) -> np.ndarray:
  """Maps linear pixels to 8-bit with ``levels``' numbers."""
  from flatai_jax import stretch as stretches
  from flatai_jax.io import display
  if stretch == "asinh":
    y = display.asinh_stretch(a, lv["black"], lv["white"])
  else:
    y = np.clip((a - lv["black"]) / max(lv["white"] - lv["black"], 1e-12), 0.0, 1.0)
    if stretch == "auto":
      y = stretches.mtf(lv["midtones"], y)
  return np.round(np.asarray(y, np.float64) * 255).astype(np.uint8)


def render_png(a: np.ndarray, stretch: str, lv: dict | None = None) -> bytes:
  """PNG bytes of ``(H, W, C)`` linear pixels (already ≤ ``MAX_SIDE``), stretched with ``lv``
  (default: ``levels`` of ``a`` itself — the preview of a whole frame)."""
  from PIL import Image
  lv = levels(a, stretch) if lv is None else lv
  y = apply_stretch(a, stretch, lv)
  buf = io.BytesIO()
  Image.fromarray(y[..., 0] if y.shape[-1] == 1 else y).save(buf, format="PNG")
  return buf.getvalue()


@functools.lru_cache(maxsize=3)
def _full(path: str) -> np.ndarray:
  """Full-resolution pixels of a file, a few kept (zooming in reads regions of them)."""
  from flatai_jax.io import images
  return images.read_image(path, allow_nan=True)[0]


# --- the app -------------------------------------------------------------------------------


class Worker:
  """Jobs and the thread that corrects them, one at a time, with cached models."""

  def __init__(self, workdir: Path, checkpoint: str | None):
    self.workdir, self.checkpoint = workdir, checkpoint
    self.jobs: dict[str, Job] = {}
    self.queue: queue.Queue = queue.Queue()
    self.correctors: dict = {}
    self.lock = threading.Lock()
    threading.Thread(target=self._loop, daemon=True, name="flatai-gui-worker").start()

  def submit(self, name: str, data: bytes, options: dict) -> Job:
    """Saves an upload and queues its correction."""
    job_id = uuid.uuid4().hex[:12]
    folder = self.workdir / job_id
    folder.mkdir(parents=True)
    safe = re.sub(r"[\\/\x00]", "_", Path(name).name) or "image"
    path = folder / safe
    path.write_bytes(data)
    job = Job(job_id, safe, path, options)
    with self.lock:
      self.jobs[job_id] = job
    self.queue.put(job)
    return job

  def corrector(self, model: str):
    """The cached ``Corrector`` of a model choice: a shipped name or a run directory."""
    from flatai_jax import correct
    key = model or "default"
    if key not in self.correctors:
      if key == "default":
        source = self.checkpoint
      elif key == "tile":
        source = correct.TILE_MODEL
      elif key in ("psf", "combined"):  # the shipped aberration model, alone or after the flat one
        self.correctors[key] = correct.load(task=key)
        return self.correctors[key]
      else:
        source = Path(key).expanduser()
        if not source.exists():
          raise FileNotFoundError(f"model {key}: no such run directory")
      self.correctors[key] = correct.load(source)
    return self.correctors[key]

  def _loop(self):
    while True:
      job = self.queue.get()
      job.status = "running"
      try:
        self._run(job)
        job.status = "done"
      except Exception as e:  # any failure: one readable line on the page, the rest go on
        job.message = readable(e, job)
        job.status = "error"
        traceback.print_exc()  # for the terminal that started the server, never the page

  def _run(self, job: Job):
    from flatai_jax import correct
    o = job.options
    if o.get("model") == PHYSICS:
      return self._run_physics(job)
    corrector = self.corrector(o.get("model", "default"))
    task = correct.resolve_task(corrector.task, o.get("task") or None)

    def progress(done, total):
      job.done, job.total = done, total

    report = corrector.correct_file(
        job.input, out_dir=job.input.parent, task=task, tile=o.get("tile"),
        overlap=o.get("overlap"), strength=o.get("strength", 1.0), cfa=o.get("cfa", "auto"),
        input_stretch=o.get("input_stretch", "auto"), progress=progress,
        print_fn=lambda *a, **k: job.notes.append(
            " ".join(map(str, a)).replace(str(job.input), job.name).strip()))
    job.outputs = {k: Path(v) for k, v in report["outputs"].items()}
    job.shape = _full(str(job.input)).shape[:2]
    job.done = job.total = max(job.total, 1)

  def _run_physics(self, job: Job):
    """``flatai correct --task=psf --method=physics``: the PSF field from the frame's stars and
    its deconvolution (``correct_psf.correct_file``, the CLI's own function)."""
    from flatai_jax import correct_psf
    from flatai_jax.config_args import default_config
    job.total = 1
    report = correct_psf.correct_file(job.input, default_config("psf").degrade.psf,
                                      out_dir=job.input.parent)
    job.notes.append(correct_psf.describe(report))
    job.outputs = {k: Path(v) for k, v in report["outputs"].items()}
    job.shape = _full(str(job.input)).shape[:2]
    job.done = 1

  def preview(self, job: Job, kind: str) -> np.ndarray:
    """The downsampled whole frame of a view, computed once."""
    if kind not in job.previews:
      path = job.input if kind == "input" else job.outputs[kind]
      job.previews[kind] = downsample(_full(str(path)))
    return job.previews[kind]


def readable(error: Exception, job: Job) -> str:
  """One line for the page: the problem and the file's name, not the server's temp path."""
  from flatai_jax.io.images import ImageError
  text = str(error).replace(str(job.input), job.name).replace(str(job.input.parent) + "/", "")
  text = text.splitlines()[0] if text.strip() else type(error).__name__
  if isinstance(error, ImageError) or text.startswith(job.name):
    return text
  return f"{job.name}: {text}"


def create_app(checkpoint: str | None = None, workdir: str | None = None):
  """The FastAPI app; ``checkpoint``: the model the page offers as default (None: shipped)."""
  from flatai_jax import stretch as stretches
  root = Path(workdir or tempfile.mkdtemp(prefix="flatai_gui_"))
  worker = Worker(root, checkpoint)
  app = FastAPI(title="flatai gui", docs_url=None, redoc_url=None)
  app.state.worker = worker

  @app.exception_handler(StarletteHTTPException)
  async def _http_error(request, exc):  # {"error": "..."} for the page, never a trace
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

  @app.exception_handler(Exception)
  async def _any_error(request, exc):
    return JSONResponse({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]},
                        status_code=500)

  @app.get("/")
  def index():
    return FileResponse(STATIC / "index.html")

  app.mount("/static", StaticFiles(directory=STATIC), name="static")

  @app.get("/api/info")
  def info():
    import jax
    return {"checkpoint": checkpoint or "shipped whole-frame flat model",
            "device": f"{jax.devices()[0].platform} ({len(jax.devices())} devices)"}

  @app.post("/api/jobs")
  def submit(files: list[UploadFile] = File(...), model: str = Form("default"),
             task: str = Form(""), strength: float = Form(1.0), cfa: str = Form("auto"),
             input_stretch: str = Form("auto"), tile: str = Form(""), overlap: str = Form("")):
    if not 0.0 <= strength <= 1.0:
      raise HTTPException(400, f"strength {strength} must be in [0, 1]")
    if task not in ("", "flat", "psf", "combined"):
      raise HTTPException(400, f"unknown task {task!r}")
    if cfa not in ("auto", "none", "RGGB", "BGGR", "GRBG", "GBRG"):
      raise HTTPException(400, f"unknown CFA {cfa!r}")
    try:
      stretches.parse(input_stretch)
      tile_px = int(tile) if tile.strip() else None
      overlap_px = int(overlap) if overlap.strip() else None
    except ValueError as e:
      raise HTTPException(400, str(e).replace("invalid literal for int() with base 10",
                                              "tile and overlap must be whole numbers"))
    options = {"model": model.strip() or "default", "task": task, "strength": strength,
               "cfa": cfa, "input_stretch": input_stretch, "tile": tile_px, "overlap": overlap_px}
    jobs = [worker.submit(f.filename or "image", f.file.read(), options) for f in files]
    return {"jobs": [j.public() for j in jobs]}

  def job_of(job_id: str) -> Job:
    job = worker.jobs.get(job_id)
    if job is None:
      raise HTTPException(404, f"no job {job_id}")
    return job

  @app.get("/api/jobs/{job_id}")
  def status(job_id: str):
    return job_of(job_id).public()

  @app.get("/api/jobs/{job_id}/files/{key}")
  def download(job_id: str, key: str):
    job = job_of(job_id)
    if key not in job.outputs:
      raise HTTPException(404, f"{job.name}: no {key} output")
    return FileResponse(job.outputs[key], filename=job.outputs[key].name)

  @app.get("/api/jobs/{job_id}/image/{kind}.png")
  def image(job_id: str, kind: str, stretch: str = "auto", x: int = 0, y: int = 0,
            w: int = 0, h: int = 0):
    """A view: the whole frame downsampled, or (``w``, ``h`` > 0) a full-resolution region
    ``[y, y+h) × [x, x+w)`` downsampled to ≤ MAX_SIDE, stretched with the whole frame's
    levels."""
    job = job_of(job_id)
    if kind not in KINDS or (kind != "input" and kind not in job.outputs):
      raise HTTPException(404, f"{job.name}: no {kind} view")
    if stretch not in STRETCHES:
      raise HTTPException(400, f"stretch must be one of {STRETCHES}")
    preview = worker.preview(job, kind)
    if w <= 0 or h <= 0:
      return Response(render_png(preview, stretch), media_type="image/png")
    full = _full(str(job.input if kind == "input" else job.outputs[kind]))
    region = full[max(y, 0):max(y, 0) + h, max(x, 0):max(x, 0) + w]
    if region.size == 0:
      raise HTTPException(400, "empty region")
    return Response(render_png(downsample(region), stretch, levels(preview, stretch)),
                    media_type="image/png")

  @app.get("/api/jobs/{job_id}/beforeafter.png")
  def before_after(job_id: str, stretch: str = "auto"):
    """Input and corrected side by side, each with its own levels of ``stretch``."""
    job = job_of(job_id)
    if "corrected" not in job.outputs:
      raise HTTPException(404, f"{job.name}: not corrected")
    if stretch not in STRETCHES:
      raise HTTPException(400, f"stretch must be one of {STRETCHES}")
    from PIL import Image
    panels = [apply_stretch(p, stretch, levels(p, stretch))
              for p in (worker.preview(job, "input"), worker.preview(job, "corrected"))]
    gap = np.full((panels[0].shape[0], 8, panels[0].shape[2]), 255, np.uint8)
    both = np.concatenate([panels[0], gap, panels[1]], axis=1)
    buf = io.BytesIO()
    Image.fromarray(both[..., 0] if both.shape[-1] == 1 else both).save(buf, format="PNG")
    stem = job.outputs["corrected"].name.split(".")[0]
    return Response(buf.getvalue(), media_type="image/png", headers={
        "Content-Disposition": f'attachment; filename="{stem}_before_after.png"'})

  return app


def bind(port: int, host: str = "127.0.0.1") -> socket.socket:
  """A listening socket on ``host:port`` (``port=0``: a free one)."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  return sock


def make_server(app):
  """A uvicorn server for ``app``; ``server.run(sockets=[bind(port)])`` serves."""
  import uvicorn
  return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))


def serve(port: int = 8765, checkpoint: str | None = None, print_fn=print) -> None:
  """``flatai gui``: serves the page on 127.0.0.1 until interrupted."""
  sock = bind(port)
  app = create_app(checkpoint)
  print_fn(f"flatai gui: open http://127.0.0.1:{sock.getsockname()[1]}/ "
           f"(uploads and outputs in {app.state.worker.workdir}; Ctrl-C stops)", flush=True)
  make_server(app).run(sockets=[sock])
