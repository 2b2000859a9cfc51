"""Caffe's two file kinds, read without Caffe: the weights (`.caffemodel`, a binary `NetParameter`) and the network
definition (`.prototxt`, the same message in protobuf's text format).

The weights are parsed by the `protobuf` package with a schema built here from the messages of the bottom-up fork's
`caffe.proto` that hold weights (NetParameter, LayerParameter, V1LayerParameter, BlobProto, BlobShape), under the same
field numbers; every other field of the file is skipped as unknown. Nothing in a file is executed. The prototxt is read
by a small parser of the text format into nested dicts, since the detector is built from a handful of its fields.
See docs/published-detector.md.
"""

from __future__ import annotations

import gzip
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np


class CaffeFormatError(ValueError):
    """A file that is not what it should be; the message is one line naming the file."""


# -- .caffemodel -------------------------------------------------------------------------------------------------------
# (message, [(field name, number, label, type, message type name)]) as in caffe.proto. BlobProto.data is a packed
# repeated float there; it is declared `bytes` here (the same length-delimited wire form) so that 60 M weights become
# one numpy buffer instead of 60 M Python floats. A file written unpacked falls back to the float declaration.
_O, _R = 1, 3  # LABEL_OPTIONAL, LABEL_REPEATED
_MESSAGES = {
    "BlobShape": [("dim", 1, _R, "int64", None)],
    "BlobProto": [
        ("num", 1, _O, "int32", None),
        ("channels", 2, _O, "int32", None),
        ("height", 3, _O, "int32", None),
        ("width", 4, _O, "int32", None),
        ("data", 5, _O, "bytes", None),
        ("shape", 7, _O, "message", "BlobShape"),
        ("double_data", 8, _O, "bytes", None),
    ],
    "LayerParameter": [
        ("name", 1, _O, "string", None),
        ("type", 2, _O, "string", None),
        ("bottom", 3, _R, "string", None),
        ("top", 4, _R, "string", None),
        ("blobs", 7, _R, "message", "BlobProto"),
    ],
    "V1LayerParameter": [  # the layers of caffemodels written before 2015
        ("bottom", 2, _R, "string", None),
        ("top", 3, _R, "string", None),
        ("name", 4, _O, "string", None),
        ("blobs", 6, _R, "message", "BlobProto"),
    ],
    "NetParameter": [
        ("name", 1, _O, "string", None),
        ("layers", 2, _R, "message", "V1LayerParameter"),
        ("layer", 100, _R, "message", "LayerParameter"),
    ],
}


@cache
def _net_parameter(packed_bytes: bool = True):
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    types = {
        "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
        "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
        "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
        "message": descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
    }
    package = "vqacap_caffe_packed" if packed_bytes else "vqacap_caffe"
    file = descriptor_pb2.FileDescriptorProto(name=f"{package}.proto", package=package, syntax="proto2")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            if not packed_bytes and field_name in ("data", "double_data"):
                label, kind = _R, "float" if field_name == "data" else "double"
            field = message.field.add(name=field_name, number=number, label=label, type=types[kind])
            if type_name:
                field.type_name = f".{package}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    descriptor = pool.FindMessageTypeByName(f"{package}.NetParameter")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf < 4.21


def _blob_shape(blob) -> tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)  # 4-d blobs of old files
    return tuple(int(d) for d in legacy)


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """The weights of a .caffemodel: layer name -> its blobs as float32 arrays of the shapes Caffe stores
    (convolution (out, in, kh, kw), inner product (out, in), BatchNorm mean, variance and scale factor, ...).
    Layers without weights are left out."""
    path = Path(path)
    if not path.is_file():
        raise CaffeFormatError(f"{path}: Caffe weights not found")
    data = path.read_bytes()
    net = _parse(path, data, packed_bytes=True)
    layers = list(net.layer) or list(net.layers)
    if any(_needs_float_schema(blob) for layer in layers for blob in layer.blobs):
        net = _parse(path, data, packed_bytes=False)
        layers = list(net.layer) or list(net.layers)
    weights: dict[str, list[np.ndarray]] = {}
    for layer in layers:
        if not layer.blobs:
            continue
        if not layer.name:
            raise CaffeFormatError(f"{path}: a layer with weights has no name: not a Caffe model")
        weights[layer.name] = [_blob_array(path, layer.name, i, blob) for i, blob in enumerate(layer.blobs)]
    if not weights:
        raise CaffeFormatError(
            f"{path}: not a readable PyTorch checkpoint or .caffemodel (a Caffe NetParameter with weights)"
        )
    return weights


def _parse(path: Path, data: bytes, packed_bytes: bool):
    from google.protobuf.message import DecodeError

    net = _net_parameter(packed_bytes)()
    try:
        net.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        raise CaffeFormatError(
            f"{path}: not a readable PyTorch checkpoint or .caffemodel, truncated or another kind of file "
            f"(protobuf: {str(err).splitlines()[0]})"
        ) from None
    return net


def _needs_float_schema(blob) -> bool:
    if isinstance(blob.data, bytes):
        return not blob.data and not blob.double_data and int(np.prod(_blob_shape(blob))) > 0
    return False


def _blob_array(path: Path, layer: str, index: int, blob) -> np.ndarray:
    shape = _blob_shape(blob)
    if isinstance(blob.data, bytes):
        raw, dtype = (blob.data, "<f4") if blob.data else (blob.double_data, "<f8")
        values = np.frombuffer(raw, dtype=dtype)
    else:
        values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float64)
    if values.size != int(np.prod(shape)):
        raise CaffeFormatError(
            f"{path}: layer {layer} blob {index}: {values.size} values for shape {list(shape)} (truncated file?)"
        )
    return values.astype(np.float32).reshape(shape)


# -- .prototxt ---------------------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|(?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')|(?P<punct>[{}:<>\[\],;])"""
    r"""|(?P<word>[^\s{}:<>\[\],;"'#]+)"""
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "'": "'", '"': '"', "\\": "\\"}


def read_prototxt(path: str | os.PathLike) -> dict[str, list[Any]]:
    """A prototxt as nested dicts: every field name -> the list of its values (a str, int, float or a nested dict);
    enum values (MAX, AVE) and booleans stay strings."""
    path = Path(path)
    if not path.is_file():
        raise CaffeFormatError(f"{path}: network definition (.prototxt) not found")
    try:
        raw = path.read_bytes()
        text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    except (UnicodeDecodeError, OSError, EOFError):
        raise CaffeFormatError(f"{path}: not a .prototxt (not UTF-8 text)") from None
    tokens = _tokens(path, text)
    message, position = _message(path, tokens, 0, top=True)
    return message


def _tokens(path: Path, text: str) -> list[tuple[str, str, int]]:
    tokens, position, line = [], 0, 1
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise CaffeFormatError(f"{path}:{line}: not a .prototxt (unexpected {text[position]!r})")
        kind = match.lastgroup
        if kind:
            tokens.append((kind, match.group(kind), line))
        line += match.group(0).count("\n")
        position = match.end()
    return tokens


def _message(path: Path, tokens, i: int, top: bool = False) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while i < len(tokens):
        kind, value, line = tokens[i]
        if kind == "punct" and value in "}>" and not top:
            return fields, i + 1
        if kind != "word":
            raise CaffeFormatError(f"{path}:{line}: not a .prototxt (expected a field name, got {value!r})")
        i += 1
        if i < len(tokens) and tokens[i][1] == ":":
            i += 1
        if i >= len(tokens):
            raise CaffeFormatError(f"{path}:{line}: not a .prototxt (field {value} has no value)")
        if tokens[i][1] in ("{", "<"):
            item, i = _message(path, tokens, i + 1)
        elif tokens[i][0] in ("word", "string"):
            item, i = _scalar(tokens[i]), i + 1
            while (
                i < len(tokens) and tokens[i][0] == "string" and isinstance(item, str)
            ):  # "a" "b" concatenates
                item, i = item + _scalar(tokens[i]), i + 1
        else:
            raise CaffeFormatError(f"{path}:{line}: not a .prototxt (field {value} has no value)")
        fields.setdefault(value, []).append(item)
        if i < len(tokens) and tokens[i][1] in (",", ";"):
            i += 1
    if not top:
        raise CaffeFormatError(f"{path}: not a .prototxt (a '{{' is never closed)")
    return fields, i


def _scalar(token: tuple[str, str, int]) -> Any:
    kind, value, _ = token
    if kind == "string":
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), value[1:-1])
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value


def field(message: dict[str, list[Any]], name: str, default: Any = None) -> Any:
    """The (last) value of a field of a parsed prototxt message, or `default`."""
    values = message.get(name)
    return values[-1] if values else default
