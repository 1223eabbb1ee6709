"""Minimal safetensors reader/writer (Python standard library only), for scripts
that handle taiyi's input and output files without numpy or torch."""
import array
import json
import struct

_CODES = {"F32": "f", "I64": "q", "I32": "i", "U8": "B"}


def read(path):
    """Returns {name: (dtype, shape, values)} with values as a flat array."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        values = array.array(_CODES[info["dtype"]])
        values.frombytes(data[base + begin : base + end])
        out[name] = (info["dtype"], info["shape"], values)
    return out


def write(path, tensors):
    """tensors: {name: (dtype, shape, values)}."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, values = tensors[name]
        blob = array.array(_CODES[dtype], values).tobytes()
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
