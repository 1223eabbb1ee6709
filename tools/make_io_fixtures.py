#!/usr/bin/env python3
"""Generates the small weight-file fixtures of tests/io into tests/fixtures/io/.

Python 3 standard library only (no torch): PyTorch checkpoints are written the
way torch.save writes them (torch/serialization.py, torch >= 1.6): a zip whose
entries share one prefix, <prefix>/data.pkl pickled with protocol 2 by a plain
pickle.Pickler whose persistent_id turns storages into
('storage', torch.<Type>Storage, key, 'cpu', numel), and tensors that reduce to
torch._utils._rebuild_tensor_v2. Fake `torch` / `torch._utils` modules stand in
for the real ones, so the pickle bytes are the ones torch would write;
`--check-against` proves it by re-pickling a real checkpoint byte for byte.
The zip container mimics PyTorch's writer (miniz: every entry's data 64-byte
aligned with an "FB" padding extra field, sizes in a data descriptor, a zip64
end record); some variants use Python's zipfile instead (unaligned data,
deflate, force_zip64).

Also writes good and broken safetensors files, hostile and broken pickles, and
expected.json: for every good file, each tensor's dtype, shape and values in
logical (row-major) order.

    python3 tools/make_io_fixtures.py                 # (re)writes tests/fixtures/io/
    python3 tools/make_io_fixtures.py --check-against tests/fixtures/tiny-taiyi/unet/diffusion_pytorch_model.bin
"""

import argparse
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
import zlib

# ---------------------------------------------------------------------------
# Fake torch: just enough for pickle to write (and read) the globals torch uses.

torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils

# name -> (struct format of one element, safetensors/manifest dtype name)
STORAGE_TYPES = {
    "FloatStorage": ("f", "F32"),
    "HalfStorage": ("e", "F16"),
    "BFloat16Storage": ("H", "BF16"),  # raw bit patterns
    "LongStorage": ("q", "I64"),
    "IntStorage": ("i", "I32"),
    "ByteStorage": ("B", "U8"),
}
for _name in STORAGE_TYPES:
    setattr(torch, _name, type(_name, (), {"__module__": "torch", "__qualname__": _name}))


class FakeStorage:
    def __init__(self, key, type_name, values=None, numel=None, data=None):
        self.key = key
        self.type = getattr(torch, type_name)
        fmt = STORAGE_TYPES[type_name][0]
        self.values = list(values) if values is not None else None
        self.numel = numel if numel is not None else len(self.values)
        self.data = data if data is not None else struct.pack("<%d%s" % (len(self.values), fmt), *self.values)


class FakeTensor:
    """Pickles as torch.Tensor.__reduce_ex__ does (torch/_tensor.py: _reduce_ex_internal)."""

    def __init__(self, storage, offset, size, stride, requires_grad=False, metadata=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)
        self.requires_grad, self.metadata = requires_grad, metadata

    def __reduce_ex__(self, protocol):
        args = (self.storage, self.offset, self.size, self.stride, self.requires_grad, collections.OrderedDict())
        if self.metadata is not None:
            args += (self.metadata,)
        return (torch_utils._rebuild_tensor_v2, args)

    def logical_values(self):
        """Element values in row-major order of the view (what a reader must see)."""
        out = []

        def walk(dim, off):
            if dim == len(self.size):
                out.append(self.storage.values[off])
                return
            for i in range(self.size[dim]):
                walk(dim + 1, off + i * self.stride[dim])

        walk(0, self.offset)
        return out


class FakeParameter:
    """Pickles as torch.nn.Parameter.__reduce_ex__ does (torch/nn/parameter.py)."""

    def __init__(self, tensor, requires_grad=True):
        self.tensor, self.requires_grad = tensor, requires_grad

    def __reduce_ex__(self, protocol):
        return (torch_utils._rebuild_parameter, (self.tensor, self.requires_grad, collections.OrderedDict()))


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    return FakeTensor(storage, offset, size, stride, requires_grad, metadata)


def _rebuild_parameter(tensor, requires_grad, hooks):
    return FakeParameter(tensor, requires_grad)


_rebuild_tensor_v2.__module__ = _rebuild_parameter.__module__ = "torch._utils"
torch_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
torch_utils._rebuild_parameter = _rebuild_parameter


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj, protocol=2):
    buf = io.BytesIO()
    TorchPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def collect_storages(obj, out):
    """Storages reachable from a state dict (or a Lightning dict around one), by key."""
    if isinstance(obj, FakeParameter):
        collect_storages(obj.tensor, out)
    elif isinstance(obj, FakeTensor):
        out[obj.storage.key] = obj.storage
    elif isinstance(obj, dict):
        for v in obj.values():
            collect_storages(v, out)
    return out


# ---------------------------------------------------------------------------
# Zip writers.


def torch_zip_bytes(prefix, entries, zip64=False, deflate=False):
    """A zip laid out like PyTorch's miniz-based writer (caffe2/serialize/inline_container.cc).

    zip64=True saturates every 32-bit size/offset field and moves the values into zip64
    extra fields, as the writer does past 4 GiB.
    """
    out = bytearray()
    central = bytearray()
    for name, data in entries:
        name_b = (prefix + name).encode()
        method = 8 if deflate else 0
        if deflate:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload = c.compress(data) + c.flush()
        else:
            payload = data
        crc = zlib.crc32(data)
        offset = len(out)
        local_extra = b""
        if zip64:
            local_extra = struct.pack("<HHQQ", 1, 16, 0, 0)
        # "FB" padding: data starts on a 64-byte boundary.
        header_len = 30 + len(name_b) + len(local_extra)
        pad = (64 - (offset + header_len + 4) % 64) % 64
        local_extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        size_field = 0xFFFFFFFF if zip64 else 0
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 0, 0x0808, method, 0, 0, 0, size_field, size_field,
                           len(name_b), len(local_extra))
        out += name_b + local_extra
        assert len(out) % 64 == 0
        out += payload
        if zip64:
            out += struct.pack("<IIQQ", 0x08074B50, crc, len(payload), len(data))
        else:
            out += struct.pack("<IIII", 0x08074B50, crc, len(payload), len(data))
        if zip64:
            cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(payload), offset)
            csize = usize = coff = 0xFFFFFFFF
        else:
            cextra, csize, usize, coff = b"", len(payload), len(data), offset
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0, 0, 0x0808, method, 0, 0, crc, csize, usize,
                               len(name_b), len(cextra), 0, 0, 0, 0, coff)
        central += name_b + cextra
    cd_offset, cd_size, n = len(out), len(central), len(entries)
    out += central
    eocd64_offset = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 0x031E, 45, 0, 0, n, n, cd_size, cd_offset)
    out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_offset, 1)
    if zip64:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, cd_size, cd_offset, 0)
    return bytes(out)


def pyzip_bytes(prefix, entries, compression=zipfile.ZIP_STORED, force_zip64=False):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(prefix + name, date_time=(2022, 10, 1, 0, 0, 0))
            info.compress_type = compression
            with z.open(info, "w", force_zip64=force_zip64) as f:
                f.write(data)
    return buf.getvalue()


def checkpoint_entries(obj, protocol=2, pickled=None):
    """The entries torch.save writes for `obj`: data.pkl, data/<key> for every storage, version."""
    pkl = pickled if pickled is not None else torch_pickle(obj, protocol)
    entries = [("data.pkl", pkl)]
    for key, st in sorted(collect_storages(obj, {}).items()):
        entries.append(("data/" + key, st.data))
    entries.append(("version", b"3\n"))
    return entries


# ---------------------------------------------------------------------------
# Fixture contents.


def f32_to_bf16_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16  # values below are exact in bf16


def manifest_entry(dtype, shape, values):
    return {"dtype": dtype, "shape": list(shape), "values": values}


def tensor_manifest(t):
    if isinstance(t, FakeParameter):
        t = t.tensor
    dtype = STORAGE_TYPES[t.storage.type.__name__][1]
    values = t.logical_values()
    if dtype == "BF16":
        values = [struct.unpack("<f", struct.pack("<I", v << 16))[0] for v in values]
    return manifest_entry(dtype, t.size, values)


def make_state_dict():
    """The main good state dict: every dtype, shared storages, views, a parameter, a scalar."""
    s_f32 = FakeStorage("0", "FloatStorage", [0.5 * i - 1.0 for i in range(6)])
    s_f16 = FakeStorage("1", "HalfStorage", [1.0, -2.0, 0.5, 65504.0])
    s_bf16 = FakeStorage("2", "BFloat16Storage", [f32_to_bf16_bits(v) for v in (1.0, -2.5, 3.140625)])
    s_i64 = FakeStorage("3", "LongStorage", [0, 1, -4, 2**40, -(2**62)])
    s_i32 = FakeStorage("4", "IntStorage", [-1, 7, 2147483647])
    s_u8 = FakeStorage("5", "ByteStorage", [0, 1, 127, 128, 255])
    s_mat = FakeStorage("6", "FloatStorage", [10.0, 11.0, 12.0, 13.0, 14.0, 15.0])
    s_scalar = FakeStorage("7", "FloatStorage", [42.0])
    s_param = FakeStorage("8", "FloatStorage", [0.25, -0.75])
    sd = collections.OrderedDict()
    sd["conv.weight"] = FakeTensor(s_f32, 0, (2, 3), (3, 1))
    sd["half"] = FakeTensor(s_f16, 0, (4,), (1,))
    sd["bfloat"] = FakeTensor(s_bf16, 0, (3,), (1,))
    sd["embeddings.position_ids"] = FakeTensor(s_i64, 0, (1, 5), (5, 1))
    sd["ints"] = FakeTensor(s_i32, 0, (3,), (1,))
    sd["bytes"] = FakeTensor(s_u8, 0, (5,), (1,))
    sd["mat"] = FakeTensor(s_mat, 0, (2, 3), (3, 1))
    sd["mat_t"] = FakeTensor(s_mat, 0, (3, 2), (1, 3))  # transposed: non-contiguous view of mat's storage
    sd["mat_row1"] = FakeTensor(s_mat, 3, (3,), (1,))  # nonzero storage offset into the same storage
    sd["scalar"] = FakeTensor(s_scalar, 0, (), ())
    sd["param"] = FakeParameter(FakeTensor(s_param, 0, (2,), (1,)), True)
    sd["with_metadata"] = FakeTensor(s_f32, 4, (2,), (1,), metadata={})  # 7-argument _rebuild_tensor_v2
    sd["empty"] = FakeTensor(s_f32, 0, (0, 3), (3, 1))
    # What nn.Module.state_dict() attaches: a BUILD with {'_metadata': OrderedDict(prefix -> {'version': n})}.
    sd._metadata = collections.OrderedDict([("", {"version": 1}), ("conv", {"version": 1})])
    return sd


def make_small_state_dict(prefix_values=(1.0, 2.0, 3.0, 4.0)):
    s = FakeStorage("0", "FloatStorage", list(prefix_values))
    sd = collections.OrderedDict()
    sd["w"] = FakeTensor(s, 0, (2, 2), (2, 1))
    sd["w_t"] = FakeTensor(s, 0, (2, 2), (1, 2))
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def manifest_of(sd):
    return {k: tensor_manifest(v) for k, v in sd.items()}


# --- hostile / broken pickles, hand-assembled ---


def binunicode(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def global_call(module, name, arg):
    """GLOBAL module.name, then REDUCE with one string argument: what a malicious .bin does."""
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\nq\x00" + binunicode(arg) + b"\x85q\x01Rq\x02."


def stack_global_call(module, name, arg):
    """Protocol 4 flavour: FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL."""
    body = (b"\x8c" + bytes([len(module)]) + module.encode() + b"\x94\x8c" + bytes([len(name)]) + name.encode() +
            b"\x94\x93\x94\x8c" + bytes([len(arg)]) + arg.encode() + b"\x94\x85\x94R\x94.")
    return b"\x80\x04\x95" + struct.pack("<Q", len(body)) + body


def hidden_in_state_dict(module, name):
    """A valid-looking state dict whose second value calls a forbidden global."""
    good = torch_pickle(make_small_state_dict())
    # Replace the closing SETITEMS/BUILD with: key, evil call, SETITEM.
    evil = (binunicode("evil") + b"c" + module.encode() + b"\n" + name.encode() + b"\n" + binunicode("id") +
            b"\x85R")
    assert good.startswith(b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(")
    head = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01" + evil + b"s("
    return head + good[len(b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01("):]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "io"))
    ap.add_argument("--check-against", metavar="BIN", help="re-pickle a real torch .bin and compare byte for byte")
    args = ap.parse_args()
    if args.check_against:
        return check_against(args.check_against)

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    manifest = {}

    def write(name, data):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)

    # ---- good torch checkpoints ----
    sd = make_state_dict()
    sd_manifest = manifest_of(sd)
    main_zip = torch_zip_bytes("state_dict/", checkpoint_entries(sd))
    write("state_dict.bin", main_zip)
    manifest["state_dict.bin"] = sd_manifest
    write("state_dict_zip64.bin", torch_zip_bytes("state_dict_zip64/", checkpoint_entries(sd), zip64=True))
    manifest["state_dict_zip64.bin"] = sd_manifest
    write("state_dict_deflated.bin", torch_zip_bytes("state_dict_deflated/", checkpoint_entries(sd), deflate=True))
    manifest["state_dict_deflated.bin"] = sd_manifest
    # Python's zipfile: unaligned data (the reader must copy), archive/ prefix, force_zip64 local headers.
    write("archive_prefix.pt", pyzip_bytes("archive/", checkpoint_entries(sd)))
    manifest["archive_prefix.pt"] = sd_manifest
    write("pyzip_zip64.pt", pyzip_bytes("archive/", checkpoint_entries(sd), force_zip64=True))
    manifest["pyzip_zip64.pt"] = sd_manifest
    write("pyzip_deflated.pt", pyzip_bytes("archive/", checkpoint_entries(sd), zipfile.ZIP_DEFLATED))
    manifest["pyzip_deflated.pt"] = sd_manifest
    # torch.save(..., pickle_protocol=4): FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL; plus the
    # byteorder and .data/serialization_id entries torch >= 2.1 adds.
    torch2_extras = [("byteorder", b"little"), (".data/serialization_id", b"1234567890123456789012345678901234567890")]
    write("protocol4.bin", torch_zip_bytes("protocol4/", checkpoint_entries(sd, protocol=4) + torch2_extras))
    manifest["protocol4.bin"] = sd_manifest
    # Lightning: the state dict sits under "state_dict" next to plain values.
    small = make_small_state_dict()
    lightning = {"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.6.5", "state_dict": small}
    write("lightning.ckpt", torch_zip_bytes("archive/", checkpoint_entries(lightning)))
    manifest["lightning.ckpt"] = manifest_of(small)
    # A plain dict (no OrderedDict, no _metadata) and an empty one.
    plain = {"a": small["w"], "b": small["w_t"]}
    write("plain_dict.bin", torch_zip_bytes("plain_dict/", checkpoint_entries(plain)))
    manifest["plain_dict.bin"] = manifest_of(plain)
    empty = collections.OrderedDict()
    empty._metadata = collections.OrderedDict()
    write("empty_state_dict.bin", torch_zip_bytes("empty_state_dict/", checkpoint_entries(empty)))
    manifest["empty_state_dict.bin"] = {}

    # ---- hostile pickles in otherwise valid torch zips ----
    small_entries = checkpoint_entries(small)

    def with_pickle(prefix, pkl):
        return torch_zip_bytes(prefix, [("data.pkl", pkl)] + small_entries[1:])

    write("evil_os_system.bin", with_pickle("evil_os_system/", global_call("os", "system", "echo pwned")))
    write("evil_posix_system.bin", with_pickle("evil_posix_system/", global_call("posix", "system", "echo pwned")))
    write("evil_builtins_eval.bin", with_pickle("evil_builtins_eval/", global_call("builtins", "eval", "1+1")))
    write("evil_builtin_eval.bin", with_pickle("evil_builtin_eval/", global_call("__builtin__", "eval", "1+1")))
    write("evil_subprocess.bin", with_pickle("evil_subprocess/", global_call("subprocess", "Popen", "ls")))
    write("evil_stack_global.bin", with_pickle("evil_stack_global/", stack_global_call("os", "system", "echo pwned")))
    write("evil_torch_other.bin",
          with_pickle("evil_torch_other/", global_call("torch.storage", "_load_from_bytes", "x")))
    write("evil_hidden.bin", with_pickle("evil_hidden/", hidden_in_state_dict("nt", "system")))

    # ---- broken torch checkpoints ----
    write("truncated.bin", main_zip[: len(main_zip) // 2])
    short = small_entries[:1] + [("data/0", small_entries[1][1][:12])] + small_entries[2:]
    write("short_storage.bin", torch_zip_bytes("short_storage/", short))
    s = FakeStorage("0", "FloatStorage", [1.0, 2.0, 3.0, 4.0])
    outside = collections.OrderedDict([("ok", FakeTensor(s, 0, (4,), (1,))), ("too_far", FakeTensor(s, 2, (2, 2), (2, 1)))])
    write("view_outside.bin", torch_zip_bytes("view_outside/", checkpoint_entries(outside)))
    missing = collections.OrderedDict([("lost", FakeTensor(FakeStorage("9", "FloatStorage", [1.0]), 0, (1,), (1,)))])
    write("missing_storage.bin", torch_zip_bytes("missing_storage/", checkpoint_entries(missing)[:1]))
    # NEWOBJ (0x81): a real pickle opcode torch never writes for a state dict.
    write("bad_opcode.bin", with_pickle("bad_opcode/", b"\x80\x02}q\x00(" + binunicode("a") + b")\x81s."))
    write("memo_out_of_range.bin", with_pickle("memo_out_of_range/", b"\x80\x02}q\x00h\x07."))
    write("stack_underflow.bin", with_pickle("stack_underflow/", b"\x80\x02}q\x00(" + binunicode("a") + b"s."))
    write("deep_nesting.bin", with_pickle("deep_nesting/", b"\x80\x02" + b"]" * 300 + b"a" * 299 + b"."))
    write("self_reference.bin", with_pickle("self_reference/", b"\x80\x02]q\x00h\x00a."))
    write("huge_length.bin", with_pickle("huge_length/", b"\x80\x02X\xf0\xff\xff\xff" + b"abc"))
    write("no_stop.bin", with_pickle("no_stop/", b"\x80\x02}q\x00"))
    write("not_state_dict.bin", with_pickle("not_state_dict/", b"\x80\x02]q\x00K\x01a."))
    non_tensor = collections.OrderedDict([("w", small["w"]), ("step", 7)])
    write("non_tensor_value.bin", torch_zip_bytes("non_tensor_value/", checkpoint_entries(non_tensor)))
    bad_sibling = {"state_dict": small, "optimizer_states": [{"lr": 0.1}]}
    write("lightning_bad_sibling.ckpt", torch_zip_bytes("archive/", checkpoint_entries(bad_sibling)))
    write("no_data_pkl.bin", torch_zip_bytes("no_data_pkl/", small_entries[1:]))
    write("big_endian.bin", torch_zip_bytes("big_endian/", small_entries + [("byteorder", b"big")]))
    two = pyzip_bytes("", [("a/data.pkl", small_entries[0][1]), ("b/data.pkl", small_entries[0][1])])
    write("two_data_pkl.bin", two)
    # torch < 1.6: a bare pickle stream starting with the legacy magic number.
    write("legacy.pt", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.\x80\x02M\xe9\x03.")

    # ---- safetensors ----
    def st_file(header, data=b"", pad=True, raw_header=None):
        h = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":")).encode()
        if pad:
            h += b" " * ((8 - len(h) % 8) % 8)
        return struct.pack("<Q", len(h)) + h + data

    # Laid out as the Rust library does (element size descending), so every tensor is aligned.
    st_tensors = [  # name, dtype, shape, values, struct format
        ("position_ids", "I64", [1, 3], [0, 1, -(2**40)], "q"),
        ("weight", "F32", [2, 2], [1.5, -2.0, 0.0, 3.25], "f"),
        ("scalar", "F32", [], [7.0], "f"),
        ("nothing", "F32", [0, 4], [], "f"),
        ("count", "I32", [2], [-7, 2147483647], "i"),
        ("half", "F16", [3], [1.0, -0.5, 65504.0], "e"),
        ("bfloat", "BF16", [2], [1.0, -2.5], None),
        ("mask", "BOOL", [3], [1, 0, 1], "B"),
        ("bytes", "U8", [2], [0, 255], "B"),
    ]
    header = {"__metadata__": {"format": "pt", "note": "taiyi io fixture"}}
    data = b""
    st_manifest = {}
    for name, dtype, shape, values, fmt in st_tensors:
        if dtype == "BF16":
            raw = struct.pack("<%dH" % len(values), *[f32_to_bf16_bits(v) for v in values])
        else:
            raw = struct.pack("<%d%s" % (len(values), fmt), *values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
        st_manifest[name] = manifest_entry("U8" if dtype == "BOOL" else dtype, shape, values)
    write("st_good.safetensors", st_file(header, data))
    manifest["st_good.safetensors"] = st_manifest
    # An F32 at data offset 2: its bytes are not 4-byte aligned, so the reader must copy it.
    mis = {"a_pad": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
           "b_f32": {"dtype": "F32", "shape": [2], "data_offsets": [2, 10]}}
    write("st_misaligned.safetensors", st_file(mis, b"\x05\x06" + struct.pack("<2f", 1.25, -8.0)))
    manifest["st_misaligned.safetensors"] = {"a_pad": manifest_entry("U8", [2], [5, 6]),
                                             "b_f32": manifest_entry("F32", [2], [1.25, -8.0])}
    write("st_empty_header.safetensors", st_file({}))
    manifest["st_empty_header.safetensors"] = {}

    one = {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    eight = struct.pack("<2f", 1.0, 2.0)

    def st_bad(name, header=None, data=eight, **kw):
        write("st_bad_" + name + ".safetensors", st_file(header, data, **kw))

    write("st_bad_too_short.safetensors", b"\x10\x00\x00\x00\x00")
    write("st_bad_header_past_end.safetensors", struct.pack("<Q", 1000) + b'{"t":1}')
    write("st_bad_header_huge.safetensors", struct.pack("<Q", 1 << 40) + b"{}" + b" " * 6)
    st_bad("not_json", raw_header=b'{"t": {"dtype": "F32",')
    st_bad("not_object", raw_header=b"[1, 2, 3]")
    st_bad("entry_not_object", {"t": 5})
    st_bad("missing_dtype", {"t": {"shape": [2], "data_offsets": [0, 8]}})
    st_bad("missing_shape", {"t": {"dtype": "F32", "data_offsets": [0, 8]}})
    st_bad("missing_offsets", {"t": {"dtype": "F32", "shape": [2]}})
    st_bad("dtype_not_string", {"t": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})
    st_bad("shape_not_array", {"t": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})
    st_bad("shape_float", {"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})
    st_bad("offsets_strings", {"t": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}})
    st_bad("unknown_dtype", {"t": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}})
    st_bad("offsets_not_pair", {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})
    st_bad("offsets_reversed", {"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})
    st_bad("range_outside", {"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    st_bad("size_mismatch", {"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})
    st_bad("overlap", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})
    st_bad("negative_shape", {"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})
    st_bad("huge_shape", {"t": {"dtype": "F32", "shape": [2**32, 2**32, 16], "data_offsets": [0, 8]}})
    st_bad("metadata_not_strings", {"__metadata__": {"format": 1}, **one})
    st_bad("negative_offset", {"t": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})

    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("# io fixtures\n\nGenerated by `tools/make_io_fixtures.py` (see its docstring); do not edit by hand.\n"
                "Good files: `expected.json` lists each tensor's dtype, shape and values in row-major order.\n"
                "Hostile (`evil_*`) and broken files: the expected errors are in `tests/io/*_test.cpp`.\n")
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print("wrote %d files, %d bytes, to %s" % (len(os.listdir(out)), total, out))

    # Self-check: Python's own zipfile reads every torch-style archive we wrote.
    for f in sorted(os.listdir(out)):
        if f.endswith((".bin", ".pt", ".ckpt")) and f not in ("truncated.bin", "legacy.pt"):  # the rest must be valid zips
            with zipfile.ZipFile(os.path.join(out, f)) as z:
                assert z.testzip() is None, f


class FakeTorchUnpickler(pickle.Unpickler):
    """Loads a real data.pkl into the fake classes (only for --check-against)."""

    def __init__(self, f):
        super().__init__(f)
        self.storages = {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter"):
            return getattr(torch_utils, name)
        if module == "torch" and name in STORAGE_TYPES:
            return getattr(torch, name)
        raise pickle.UnpicklingError("refusing %s.%s" % (module, name))

    def persistent_load(self, pid):
        _, stype, key, location, numel = pid
        if key not in self.storages:
            self.storages[key] = FakeStorage(key, stype.__name__, numel=numel, data=b"")
        return self.storages[key]


def check_against(path):
    with zipfile.ZipFile(path) as z:
        name = [n for n in z.namelist() if n.endswith("/data.pkl")][0]
        original = z.read(name)
    obj = FakeTorchUnpickler(io.BytesIO(original)).load()
    again = torch_pickle(obj)
    if again != original:
        n = next(i for i in range(min(len(again), len(original))) if again[i] != original[i])
        print("DIFFERENT at byte %d: %r vs %r" % (n, original[n - 20:n + 20], again[n - 20:n + 20]))
        return 1
    # The container too: rewrite every entry with our miniz-like writer.
    with zipfile.ZipFile(path) as z:
        prefix = name[: -len("data.pkl")]
        entries = [(n[len(prefix):], z.read(n)) for n in z.namelist()]
    with open(path, "rb") as f:
        real = f.read()
    rewritten = torch_zip_bytes(prefix, entries)
    print("%s: pickle identical (%d bytes); zip container %s" %
          (path, len(original), "identical" if rewritten == real else "DIFFERENT"))
    return 0 if rewritten == real else 1


if __name__ == "__main__":
    sys.exit(main())
