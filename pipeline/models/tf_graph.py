"""Read a TensorFlow frozen ``GraphDef`` (.pb) without TensorFlow.

Only the handful of messages a frozen inference graph uses are declared here (GraphDef, NodeDef,
AttrValue, TensorProto, TensorShapeProto), with the field numbers of TensorFlow's own .proto files, and
built at import time with the ``protobuf`` package's descriptor API. Declaring the schema in Python keeps
the product free of a 500 MB TensorFlow install and of generated code: protobuf's C parser does the
decoding, and unknown fields (function libraries, debug info) are skipped by protobuf itself.

:func:`load_graph` returns name -> :class:`TfNode`; :meth:`TfNode.const` gives a ``Const`` node's value as
a NumPy array. Anything unreadable is a :class:`~pipeline.models.darknet.ModelError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from pipeline.models.errors import ModelError

_F = descriptor_pb2.FieldDescriptorProto

# TensorFlow DataType enum values (tensorflow/core/framework/types.proto) -> NumPy dtype.
_DTYPES: dict[int, Any] = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
}


def _field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    ftype: int,
    repeated: bool = False,
    type_name: str | None = None,
    packed: bool = False,
) -> None:
    f = msg.field.add()
    f.name = name
    f.number = number
    f.type = ftype
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name
    if packed:
        f.options.packed = True


def _build_classes() -> dict[str, Any]:
    """Message classes for the subset of TensorFlow's framework protos a frozen graph needs."""
    fd = descriptor_pb2.FileDescriptorProto(name="vidpipe_tf_graph.proto", package="vidpipe_tf")
    fd.syntax = "proto3"

    dim = fd.message_type.add(name="Dim")
    _field(dim, "size", 1, _F.TYPE_INT64)
    _field(dim, "name", 2, _F.TYPE_STRING)
    shape = fd.message_type.add(name="TensorShapeProto")
    _field(shape, "dim", 2, _F.TYPE_MESSAGE, True, ".vidpipe_tf.Dim")
    _field(shape, "unknown_rank", 3, _F.TYPE_BOOL)

    tensor = fd.message_type.add(name="TensorProto")
    _field(tensor, "dtype", 1, _F.TYPE_INT32)
    _field(tensor, "tensor_shape", 2, _F.TYPE_MESSAGE, type_name=".vidpipe_tf.TensorShapeProto")
    _field(tensor, "tensor_content", 4, _F.TYPE_BYTES)
    _field(tensor, "float_val", 5, _F.TYPE_FLOAT, True, packed=True)
    _field(tensor, "double_val", 6, _F.TYPE_DOUBLE, True, packed=True)
    _field(tensor, "int_val", 7, _F.TYPE_INT32, True, packed=True)
    _field(tensor, "string_val", 8, _F.TYPE_BYTES, True)
    _field(tensor, "int64_val", 10, _F.TYPE_INT64, True, packed=True)
    _field(tensor, "bool_val", 11, _F.TYPE_BOOL, True, packed=True)

    lst = fd.message_type.add(name="ListValue")
    _field(lst, "s", 2, _F.TYPE_BYTES, True)
    _field(lst, "i", 3, _F.TYPE_INT64, True, packed=True)
    _field(lst, "f", 4, _F.TYPE_FLOAT, True, packed=True)
    _field(lst, "b", 5, _F.TYPE_BOOL, True, packed=True)
    _field(lst, "type", 6, _F.TYPE_INT32, True, packed=True)
    _field(lst, "shape", 7, _F.TYPE_MESSAGE, True, ".vidpipe_tf.TensorShapeProto")
    _field(lst, "tensor", 8, _F.TYPE_MESSAGE, True, ".vidpipe_tf.TensorProto")

    attr = fd.message_type.add(name="AttrValue")
    _field(attr, "list", 1, _F.TYPE_MESSAGE, type_name=".vidpipe_tf.ListValue")
    _field(attr, "s", 2, _F.TYPE_BYTES)
    _field(attr, "i", 3, _F.TYPE_INT64)
    _field(attr, "f", 4, _F.TYPE_FLOAT)
    _field(attr, "b", 5, _F.TYPE_BOOL)
    _field(attr, "type", 6, _F.TYPE_INT32)
    _field(attr, "shape", 7, _F.TYPE_MESSAGE, type_name=".vidpipe_tf.TensorShapeProto")
    _field(attr, "tensor", 8, _F.TYPE_MESSAGE, type_name=".vidpipe_tf.TensorProto")

    # map<string, AttrValue> is, on the wire, a repeated (key=1, value=2) entry message.
    entry = fd.message_type.add(name="AttrEntry")
    _field(entry, "key", 1, _F.TYPE_STRING)
    _field(entry, "value", 2, _F.TYPE_MESSAGE, type_name=".vidpipe_tf.AttrValue")

    node = fd.message_type.add(name="NodeDef")
    _field(node, "name", 1, _F.TYPE_STRING)
    _field(node, "op", 2, _F.TYPE_STRING)
    _field(node, "input", 3, _F.TYPE_STRING, True)
    _field(node, "device", 4, _F.TYPE_STRING)
    _field(node, "attr", 5, _F.TYPE_MESSAGE, True, ".vidpipe_tf.AttrEntry")

    graph = fd.message_type.add(name="GraphDef")
    _field(graph, "node", 1, _F.TYPE_MESSAGE, True, ".vidpipe_tf.NodeDef")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"vidpipe_tf.{name}"))
        for name in ("GraphDef", "TensorProto")
    }


_CLASSES = _build_classes()


def tensor_to_numpy(t: Any, where: str) -> np.ndarray:
    """A TensorProto's value; ``where`` (file and node) goes into any error."""
    dtype = _DTYPES.get(int(t.dtype))
    if dtype is None:
        raise ModelError(f"{where}: tensor dtype {t.dtype} is not supported")
    shape = tuple(int(d.size) for d in t.tensor_shape.dim)
    count = int(np.prod(shape)) if shape else 1
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=dtype).copy()
    else:
        vals = {
            np.float32: t.float_val,
            np.float64: t.double_val,
            np.int64: t.int64_val,
            np.bool_: t.bool_val,
        }.get(dtype, t.int_val)
        arr = np.asarray(list(vals), dtype=dtype)
        if arr.size == 1 and count > 1:  # TF stores a splat constant as one value
            arr = np.full(count, arr[0], dtype=dtype)
    if arr.size != count:
        raise ModelError(f"{where}: tensor has {arr.size} values for shape {shape}")
    return arr.reshape(shape)


@dataclass
class TfNode:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any]
    where: str

    def const(self) -> np.ndarray:
        """The value of a ``Const`` node."""
        if self.op != "Const" or "value" not in self.attrs:
            raise ModelError(f"{self.where}: node {self.name!r} is a {self.op}, not a Const")
        return tensor_to_numpy(self.attrs["value"].tensor, f"{self.where}: node {self.name!r}")


def load_graph(path: str | Path) -> dict[str, TfNode]:
    """name -> node of a frozen GraphDef file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read TensorFlow graph: {exc}") from None
    graph = _CLASSES["GraphDef"]()
    try:
        graph.ParseFromString(data)
    except DecodeError as exc:
        raise ModelError(f"{path}: not a TensorFlow GraphDef ({exc})") from None
    if not graph.node:
        raise ModelError(f"{path}: TensorFlow graph has no nodes")
    return {
        n.name: TfNode(n.name, n.op, list(n.input), {a.key: a.value for a in n.attr}, str(path))
        for n in graph.node
    }
