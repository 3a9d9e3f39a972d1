"""A ``torch.save`` state_dict as numpy arrays, read without PyTorch.

**Reading without PyTorch.** A ``torch.save`` file is a zip archive: a
pickle (``data.pkl``) that describes each tensor (storage, offset, shape,
strides) and one raw record per storage. We unpickle it with a
restricted unpickler that knows only the few names a state_dict refers to
(``collections.OrderedDict``, PyTorch's tensor and parameter rebuild
functions, its typed storage classes) and refuses every other name before
anything is called: a checkpoint cannot run code here, unlike
``torch.load`` with ``weights_only=False``.
"""

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


class _Frozen:
    """Objects the unpickler hands to the pickle: a pickle's BUILD opcode
    cannot change them (no ``__dict__``, no ``setattr``)."""

    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError(f"refused: setting {name!r} on a {type(self).__name__}")


class _StorageType(_Frozen):
    __slots__ = ("dtype",)


class _Storage(_Frozen):
    __slots__ = ("array",)


class _Tensor(_Frozen):
    __slots__ = ("array",)


class _Call(_Frozen):
    """An allowed function, callable by the pickle but not changeable by
    it (a plain function's attributes, e.g. its defaults, could be set)."""

    __slots__ = ("function",)

    def __call__(self, *args):
        return self.function(*args)


def _int_tuple(value, what):
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise pickle.UnpicklingError(f"a tensor's {what} is {value!r}, not non-negative integers")
    return value


def _rebuild_tensor(storage, offset, size, stride, *_requires_grad_hooks_metadata):
    """PyTorch's ``_rebuild_tensor_v2``: the strided view of ``storage``
    starting at ``offset``, copied (bounds checked first)."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    (offset,) = _int_tuple((offset,), "storage offset")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"a tensor of size {size} with strides {stride}")
    array = storage.array
    if 0 in size:
        return _Tensor(array=np.zeros(size, array.dtype))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= array.size:
        raise pickle.UnpicklingError(
            f"a tensor of size {size}, strides {stride}, offset {offset} reaches past "
            f"its storage of {array.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        array[offset:],
        shape=size,
        strides=tuple(s * array.itemsize for s in stride),
        writeable=False,
    )
    return _Tensor(array=np.array(view))


def _rebuild_parameter(data, *_requires_grad_hooks_state):
    """PyTorch's ``_rebuild_parameter``: the parameter's tensor."""
    if not isinstance(data, _Tensor):
        raise pickle.UnpicklingError("a parameter without a tensor")
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): _Call(function=OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(function=_rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Call(function=_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(function=_rebuild_parameter),
    **{("torch", name): _StorageType(dtype=dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a ``torch.save`` archive's ``data.pkl`` into ``_Tensor``s,
    reading storages from the archive; every name outside ``_ALLOWED`` is
    refused."""

    def __init__(self, file, archive, prefix, byteorder):
        super().__init__(file)
        self.archive, self.prefix, self.byteorder = archive, prefix, byteorder
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a state_dict of tensors does not "
                "(refused, nothing was run)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        if key not in self.storages:
            dtype = np.dtype(storage_type.dtype).newbyteorder(self.byteorder)
            name = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise pickle.UnpicklingError(f"its storage record {name!r} is missing") from None
            if info.file_size != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"its storage record {name!r} holds {info.file_size} bytes, "
                    f"not {numel} x {dtype.itemsize}"
                )
            array = np.frombuffer(self.archive.read(name), dtype).astype(dtype.newbyteorder("="))
            self.storages[key] = _Storage(array=array)
        return self.storages[key]


def load_torch_state_dict(path) -> dict[str, np.ndarray]:
    """The ``{name: numpy array}`` that ``torch.save(state_dict, path)``
    wrote, read without PyTorch (and without running code from the file).

    Reads the zip format of PyTorch >= 1.6 (float16/32/64, integer and
    bool tensors; contiguous tensors and strided views). Raises
    ``FileNotFoundError`` for a missing file and ``ValueError`` for anything
    else: a damaged or foreign file, the pre-1.6 format, a pickle that
    refers to other Python objects, or entries that are not tensors.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Reference checkpoint {path!r} does not exist.")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"{path!r} is not a torch.save zip archive ({error}); files from PyTorch < 1.6: "
            "load them with torch.load and pass the state_dict."
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(
                f"{path!r} is a zip archive but not a torch.save file "
                f"({len(pickles)} data.pkl records instead of 1)."
            )
        prefix = pickles[0][: -len("data.pkl")]
        try:
            byteorder = "<"
            if prefix + "byteorder" in archive.namelist():
                order = archive.read(prefix + "byteorder").decode("ascii").strip()
                if order not in ("little", "big"):
                    raise pickle.UnpicklingError(f"unknown byte order {order!r:.20}")
                byteorder = "<" if order == "little" else ">"
            with archive.open(pickles[0]) as file:
                loaded = _StateDictUnpickler(file, archive, prefix, byteorder).load()
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as error:
            raise ValueError(f"Cannot read {path!r}: {error}.") from None
        except Exception as error:  # a malformed pickle can fail in many ways
            raise ValueError(f"Cannot read {path!r}: {type(error).__name__}: {error}.") from None
    if not isinstance(loaded, Mapping):
        raise ValueError(
            f"{path!r} holds a {type(loaded).__name__}, not a state_dict (a mapping of "
            "names to tensors, as train.py saves with torch.save(model.state_dict(), ...))."
        )
    return _arrays(loaded, repr(path))


def _arrays(mapping, where) -> dict[str, np.ndarray]:
    """``mapping`` (name -> tensor, array or ``_Tensor``) as numpy arrays."""
    result = {}
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise ValueError(f"{where} has a key {name!r} that is not a string.")
        if isinstance(value, _Tensor):
            value = value.array
        elif hasattr(value, "detach"):  # a torch.Tensor, possibly on a GPU
            value = value.detach().cpu().numpy()
        elif not isinstance(value, (np.ndarray, np.generic)):
            raise ValueError(
                f"{where}: entry {name!r} is of type {type(value).__name__}, not a tensor; "
                "expected a state_dict (train.py saves torch.save(model.state_dict(), ...))."
            )
        result[name] = np.asarray(value)
    return result


def state_dict_arrays(source, what) -> dict[str, np.ndarray]:
    """A checkpoint path or an already loaded state_dict, as numpy arrays."""
    if isinstance(source, (str, os.PathLike)):
        return load_torch_state_dict(source)
    if isinstance(source, Mapping):
        return _arrays(source, f"the {what} state_dict")
    raise ValueError(
        f"`{what}` must be a checkpoint path or a state_dict (a mapping of names to "
        f"tensors), got {type(source).__name__}."
    )
