"""Meshes and shardings: the only module that builds a mesh.

Mesh axes are ``('data', 'fsdp')``. The batch is split over both (every
device gets different examples); parameters are sharded over ``fsdp`` by
logical-axis rules from the config (``config.mesh.rules``) and replicated
over ``data``.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, device_count: int) -> tuple[int, int]:
  """Fills in the one ``-1`` axis; asserts the product equals ``device_count``."""
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={sizes[0]}, fsdp={sizes[1]}")
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if device_count % known:
      raise ValueError(f"{device_count} devices cannot be split into axes {sizes}")
    sizes[sizes.index(-1)] = device_count // known
  if int(np.prod(sizes)) != device_count:
    raise ValueError(f"mesh data={sizes[0]} × fsdp={sizes[1]} must use all "
                     f"{device_count} devices")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """A ``('data', 'fsdp')`` mesh over ``devices`` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def logical_to_mesh_spec(logical: P, rules) -> P:
  """Maps a PartitionSpec of logical names to mesh axes; unmapped names replicate."""
  table = dict(rules)
  return P(*(table.get(name) if name is not None else None for name in logical))


def state_shardings(abstract_state, mesh: Mesh, rules):
  """NamedShardings for a state pytree whose leaves may carry logical names.

  Leaves of ``nnx.Variable`` type with ``sharding`` metadata get their logical
  axes mapped through ``rules``; a mapped axis whose size the mesh axis does
  not divide is replicated instead. All other leaves are replicated.
  """
  specs = nnx.get_partition_spec(abstract_state)

  def to_sharding(leaf, spec):
    spec = spec if isinstance(spec, P) else P()
    mesh_spec = logical_to_mesh_spec(spec, rules)
    shape = getattr(leaf, "shape", ())
    fixed = []
    for dim, axis in zip(shape, tuple(mesh_spec) + (None,) * (len(shape) - len(mesh_spec))):
      fixed.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
    return NamedSharding(mesh, P(*fixed))

  return jax.tree.map(to_sharding, abstract_state, specs,
                      is_leaf=lambda x: isinstance(x, (P, jax.ShapeDtypeStruct)))


def host_batch_to_global(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy arrays → global ``jax.Array``s sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
