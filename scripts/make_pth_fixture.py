#!/usr/bin/env python3
"""Writes tests/fixtures/tiny_state_dict.pth: a tiny checkpoint in torch.save's zip format, without torch.

Layout (what torch.save writes with the default `_use_new_zipfile_serialization=True`, torch >= 1.6):

    archive/data.pkl               the object, pickled with protocol 2; every tensor is
                                   `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
                                   requires_grad, backward_hooks)` and every storage a persistent id
                                   ('storage', torch.<Type>Storage, '<key>', 'cpu', numel) (BINPERSID)
    archive/.format_version        "1"  (torch >= 2.4 writes these two records; readers ignore them)
    archive/.storage_alignment     "64"
    archive/byteorder              "little"
    archive/data/<key>             the raw little-endian bytes of storage <key>, one record per storage
    archive/version                "3\n"
    archive/.data/serialization_id a digit string (torch writes a fresh one per save; fixed here)

The zip container follows PyTorchStreamWriter (caffe2/serialize/inline_container.cc, miniz): every record
STORED (no compression), local headers with general-purpose flags 0x0808 (UTF-8 names, data descriptor
after the data) and zero crc/sizes, an "FB" extra field in the local header only whose padding puts each
record's data at a multiple of 64 bytes, a 16-byte data descriptor, a central directory with the real
crc/sizes, then a zip64 end-of-central-directory record and locator (miniz's MZ_ZIP_FLAG_WRITE_ZIP64)
before the classic end-of-central-directory record. DOS times are zero.

The pickle is produced by Python's own pickle.Pickler (protocol 2), as torch.save does, with stub classes
and functions registered under the module names `torch` and `torch._utils` while pickling, so the GLOBAL
opcodes name exactly torch.FloatStorage, torch._utils._rebuild_tensor_v2, collections.OrderedDict. Like a
real `model.state_dict()`, the top-level OrderedDict carries a `_metadata` attribute (pickled via BUILD).

The state_dict (values are exact in their dtypes; the Rust test tests/weights.rs checks them):
    layer.weight          float32 [2, 3]   [[-1, -0.5, 0], [0.5, 1, 1.5]]             storage 0
    layer.tail            float32 [2]      view of storage 0 at offset 4: [1, 1.5]      storage 0 (shared)
    layer.bias            float32 [2]      [0.25, -0.25]
    proj.weight           float32 [3, 2]   stride (1, 3): the transpose of [[1, 2, 3], [4, 5, 6]]
    embed.weight          float16 [2, 2]   [[0.5, -2], [3.140625, 2**-10]]
    norm.scale            bfloat16 [3]     [1, -0.375, 256]
    temperature           float32 []       0.125
    bn.running_mean       float64 [2]      [0.1, 0.2]
    bn.num_batches_tracked int64 []        7

Regenerate (deterministic; the output is byte-identical on every run):
    python3 scripts/make_pth_fixture.py [OUT]      # OUT defaults to tests/fixtures/tiny_state_dict.pth
The script re-reads what it wrote with zipfile and a stub Unpickler; if a real torch is importable it also
checks the file with torch.load. Standard library only.
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

ROOT = "archive"
ALIGNMENT = 64


# ---------------------------------------------------------------------------------------------- stubs


def _storage_class(name):
    return type(name, (), {"__module__": "torch", "__qualname__": name})


STORAGE_CLASSES = {
    name: _storage_class(name)
    for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "DoubleStorage", "LongStorage")
}


def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
    raise RuntimeError("stub")


_rebuild_tensor_v2.__module__ = "torch._utils"
_rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"


class Storage:
    def __init__(self, kind, fmt, values):
        self.cls = STORAGE_CLASSES[kind]
        self.numel = len(values)
        if fmt == "bf16":
            self.data = b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)
            assert all(struct.unpack("<I", struct.pack("<f", v))[0] & 0xFFFF == 0 for v in values)
        else:
            self.data = struct.pack("<%d%s" % (len(values), fmt), *values)
        self.key = None


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __reduce_ex__(self, protocol):
        # torch.Tensor._reduce_ex_internal for a dense CPU tensor without metadata.
        args = (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return (_rebuild_tensor_v2, args)


class TorchLikePickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=2)
        self.storages = collections.OrderedDict()

    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            if obj.key is None:
                obj.key = str(len(self.storages))
                self.storages[obj.key] = obj
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def build_state_dict():
    s_weight = Storage("FloatStorage", "f", [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    s_bias = Storage("FloatStorage", "f", [0.25, -0.25])
    s_proj = Storage("FloatStorage", "f", [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    s_embed = Storage("HalfStorage", "e", [0.5, -2.0, 3.140625, 2.0**-10])
    s_norm = Storage("BFloat16Storage", "bf16", [1.0, -0.375, 256.0])
    s_temp = Storage("FloatStorage", "f", [0.125])
    s_mean = Storage("DoubleStorage", "d", [0.1, 0.2])
    s_nbt = Storage("LongStorage", "q", [7])
    sd = collections.OrderedDict()
    sd["layer.weight"] = Tensor(s_weight, 0, (2, 3), (3, 1))
    sd["layer.tail"] = Tensor(s_weight, 4, (2,), (1,))
    sd["layer.bias"] = Tensor(s_bias, 0, (2,), (1,))
    sd["proj.weight"] = Tensor(s_proj, 0, (3, 2), (1, 3))
    sd["embed.weight"] = Tensor(s_embed, 0, (2, 2), (2, 1))
    sd["norm.scale"] = Tensor(s_norm, 0, (3,), (1,))
    sd["temperature"] = Tensor(s_temp, 0, (), ())
    sd["bn.running_mean"] = Tensor(s_mean, 0, (2,), (1,))
    sd["bn.num_batches_tracked"] = Tensor(s_nbt, 0, (), ())
    sd._metadata = collections.OrderedDict(
        [("", {"version": 1}), ("layer", {"version": 1}), ("proj", {"version": 1}), ("bn", {"version": 2})]
    )
    return sd


def pickle_like_torch(obj):
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")
    for name, cls in STORAGE_CLASSES.items():
        setattr(fake_torch, name, cls)
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    fake_torch._utils = fake_utils
    saved = {name: sys.modules.get(name) for name in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    try:
        buf = io.BytesIO()
        pickler = TorchLikePickler(buf)
        pickler.dump(obj)
        return buf.getvalue(), pickler.storages
    finally:
        for name, module in saved.items():
            if module is None:
                del sys.modules[name]
            else:
                sys.modules[name] = module


# ------------------------------------------------------------------------------------------------ zip


def torch_zip(records):
    """records: [(name, bytes)] -> the bytes of a zip laid out like PyTorchStreamWriter's."""
    out = bytearray()
    central = bytearray()
    for name, data in records:
        full = (ROOT + "/" + name).encode()
        offset = len(out)
        start = offset + 30 + len(full) + 4  # where data would begin with an empty FB field
        pad = (-start) % ALIGNMENT
        extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        crc = zlib.crc32(data) & 0xFFFFFFFF
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, 0, 0, 0, 0, 0, 0, len(full), len(extra))
        out += full + extra
        assert len(out) % ALIGNMENT == 0
        out += data
        out += struct.pack("<IIII", 0x08074B50, crc, len(data), len(data))
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, 0x0808, 0, 0, 0, crc, len(data), len(data), len(full), 0, 0, 0,
            0, 0, offset,
        )
        central += full
    cd_offset, cd_size, n = len(out), len(central), len(records)
    out += central
    zip64_eocd = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 0x002D, 0, 0, n, n, cd_size, cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, zip64_eocd, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0)
    return bytes(out)


# --------------------------------------------------------------------------------------------- checks


EXPECTED = {
    "layer.weight": ([2, 3], [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]),
    "layer.tail": ([2], [1.0, 1.5]),
    "layer.bias": ([2], [0.25, -0.25]),
    "proj.weight": ([3, 2], [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]),
    "embed.weight": ([2, 2], [0.5, -2.0, 3.140625, 2.0**-10]),
    "norm.scale": ([3], [1.0, -0.375, 256.0]),
    "temperature": ([], [0.125]),
    "bn.running_mean": ([2], [0.1, 0.2]),
    "bn.num_batches_tracked": ([], [7]),
}


def _gather(values, offset, size, stride):
    out = []

    def walk(dim, base):
        if dim == len(size):
            out.append(values[base])
            return
        for i in range(size[dim]):
            walk(dim + 1, base + i * stride[dim])

    walk(0, offset)
    return out


def self_check(blob):
    """Reads the archive back with zipfile and a stub Unpickler (no torch needed)."""
    zf = zipfile.ZipFile(io.BytesIO(blob))
    assert zf.testzip() is None
    formats = {"FloatStorage": "f", "HalfStorage": "e", "DoubleStorage": "d", "LongStorage": "q"}

    class Check(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return lambda st, off, size, stride, *rest: (list(size), _gather(st, off, size, stride))
            if module == "torch" and name in STORAGE_CLASSES:
                return name
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            raise pickle.UnpicklingError("unexpected global %s.%s" % (module, name))

        def persistent_load(self, pid):
            tag, kind, key, location, numel = pid
            assert tag == "storage" and location == "cpu"
            raw = zf.read("%s/data/%s" % (ROOT, key))
            if kind == "BFloat16Storage":
                return [struct.unpack("<f", b"\0\0" + raw[i : i + 2])[0] for i in range(0, len(raw), 2)]
            return list(struct.unpack("<%d%s" % (numel, formats[kind]), raw))

    sd = Check(io.BytesIO(zf.read(ROOT + "/data.pkl"))).load()
    assert list(sd) == list(EXPECTED), list(sd)
    for key, (shape, values) in EXPECTED.items():
        assert sd[key] == (shape, values), (key, sd[key])


def torch_check(path):
    try:
        import torch
    except ImportError:
        return False
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert list(sd) == list(EXPECTED), list(sd)
    for key, (shape, values) in EXPECTED.items():
        t = sd[key]
        assert list(t.shape) == shape, (key, t.shape)
        got = t.double().flatten().tolist()
        assert all(abs(a - b) <= 1e-7 * max(1.0, abs(b)) for a, b in zip(got, values)), (key, got)
    assert sd["proj.weight"].stride() == (1, 3)
    assert sd["embed.weight"].dtype == torch.float16 and sd["norm.scale"].dtype == torch.bfloat16
    return True


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "tests", "fixtures", "tiny_state_dict.pth")
    out_path = os.path.normpath(sys.argv[1] if len(sys.argv) > 1 else default)

    pkl, storages = pickle_like_torch(build_state_dict())
    records = [
        ("data.pkl", pkl),
        (".format_version", b"1"),
        (".storage_alignment", b"64"),
        ("byteorder", b"little"),
    ]
    records += [("data/" + key, storage.data) for key, storage in storages.items()]
    records += [("version", b"3\n"), (".data/serialization_id", b"0123456789012345678901234567890123456789")]
    blob = torch_zip(records)
    self_check(blob)

    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    with open(out_path, "wb") as f:
        f.write(blob)
    checked = torch_check(out_path)
    print(
        "wrote %s (%d bytes, %d storages, data.pkl %d bytes)%s"
        % (out_path, len(blob), len(storages), len(pkl), "; torch.load agrees" if checked else "; torch not installed")
    )


if __name__ == "__main__":
    main()
