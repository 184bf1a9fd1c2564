"""Vector operations on the response's 16-entry blocks, written as LLVM intrinsics.

The kernels of :mod:`.kernels` spend their time on one operation: a block of
``BLOCK`` consecutive source entries of a model row times the block's stored
values. Numba's own code for it loads and multiplies one element at a time (its
loop vectorizer prefers gathers across blocks, and its SLP vectorizer is off), so
these two intrinsics emit the block as one vector load, multiply and add, which
is several times faster. Both take C-contiguous arrays and run without bounds
checks: the callers in :mod:`.kernels` guarantee the indices.

- :func:`dot_blocks`: ``sum_b sum_u row[block[b]*BLOCK + u] * values[b, u]``,
  accumulated in float64 whatever the input types.
- :func:`axpy_blocks`: ``row[block[b]*BLOCK + u] += w * values[b, u]`` in the
  row's type.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Source entries per stored block (one 64-byte cache line of float32).
BLOCK = 16

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F64 = ir.DoubleType()
_FAST = ("fast",)


def _check_types(row, block, values):
    """Typing guard: contiguous float rows and values, an integer block array."""
    ok = (isinstance(row, types.Array) and row.ndim == 1 and row.layout == "C"
          and isinstance(row.dtype, types.Float)
          and isinstance(block, types.Array) and block.ndim == 1 and isinstance(block.dtype, types.Integer)
          and isinstance(values, types.Array) and values.ndim == 2 and values.layout == "C"
          and isinstance(values.dtype, types.Float))
    return ok


def _convert(builder, vector, target):
    """Convert a float vector to the float vector type `target`."""
    if vector.type == target:
        return vector
    if target.element == _F64:
        return builder.fpext(vector, target)
    return builder.fptrunc(vector, target)


def _block_pointers(context, builder, signature, args, b, row_vector, values_vector):
    """Pointers to the row's entries of block ``b`` and to the block's stored values."""
    row = context.make_array(signature.args[0])(context, builder, args[0])
    block = context.make_array(signature.args[1])(context, builder, args[1])
    values = context.make_array(signature.args[2])(context, builder, args[2])
    index = builder.load(builder.gep(block.data, [b]))
    index = builder.sext(index, _I64) if index.type.width < 64 else index
    row_ptr = builder.gep(row.data, [builder.mul(index, ir.Constant(_I64, BLOCK))])
    values_ptr = builder.gep(values.data, [builder.mul(b, ir.Constant(_I64, BLOCK))])
    return builder.bitcast(row_ptr, row_vector.as_pointer()), builder.bitcast(values_ptr, values_vector.as_pointer())


def _block_range(context, builder, signature, args):
    lo = context.cast(builder, args[3], signature.args[3], types.int64)
    hi = context.cast(builder, args[4], signature.args[4], types.int64)
    return lo, builder.sub(hi, lo)


@intrinsic
def dot_blocks(typingctx, row, block, values, b0, b1):
    """Dot product of `row` with the stored blocks ``b0 .. b1 - 1`` (float64 result).

    Parameters
    ----------
    row : 1-D float array (C-contiguous)
        Model row in the internal numbering.
    block : 1-D int array
        Block index of each stored block.
    values : 2-D float array (n_blocks, BLOCK), C-contiguous
    b0, b1 : int
        Range of stored blocks.
    """
    if not _check_types(row, block, values):
        return None
    signature = types.float64(row, block, values, b0, b1)

    def codegen(context, builder, signature, args):
        row_vector = ir.VectorType(context.get_data_type(signature.args[0].dtype), BLOCK)
        values_vector = ir.VectorType(context.get_data_type(signature.args[2].dtype), BLOCK)
        lanes = ir.VectorType(_F64, BLOCK)
        acc = cgutils.alloca_once_value(builder, ir.Constant(lanes, [0.0] * BLOCK))
        lo, n = _block_range(context, builder, signature, args)
        with cgutils.for_range(builder, n) as loop:
            b = builder.add(lo, loop.index)
            row_ptr, values_ptr = _block_pointers(context, builder, signature, args, b, row_vector, values_vector)
            r = _convert(builder, builder.load(row_ptr, align=4), lanes)
            v = _convert(builder, builder.load(values_ptr, align=4), lanes)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(r, v, flags=_FAST), flags=_FAST), acc)
        # pairwise sum of the lanes: a fixed order, so the result does not depend on the compiler
        total, width = builder.load(acc), BLOCK
        while width > 1:
            width //= 2
            low = builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
            high = builder.shuffle_vector(total, total,
                                          ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
            total = builder.fadd(low, high)
        return builder.extract_element(total, ir.Constant(_I32, 0))

    return signature, codegen


@intrinsic
def axpy_blocks(typingctx, row, block, values, b0, b1, w):
    """``row[block[b]*BLOCK + u] += w * values[b, u]`` for the stored blocks ``b0 .. b1 - 1``.

    Parameters are those of :func:`dot_blocks` and the float weight `w`; the
    update is computed in the row's type.
    """
    if not _check_types(row, block, values) or not isinstance(w, (types.Float, types.Integer)):
        return None
    signature = types.void(row, block, values, b0, b1, w)

    def codegen(context, builder, signature, args):
        row_type = context.get_data_type(signature.args[0].dtype)
        row_vector = ir.VectorType(row_type, BLOCK)
        values_vector = ir.VectorType(context.get_data_type(signature.args[2].dtype), BLOCK)
        weight = context.cast(builder, args[5], signature.args[5], signature.args[0].dtype)
        weights = cgutils.get_null_value(row_vector)
        for u in range(BLOCK):
            weights = builder.insert_element(weights, weight, ir.Constant(_I32, u))
        lo, n = _block_range(context, builder, signature, args)
        with cgutils.for_range(builder, n) as loop:
            b = builder.add(lo, loop.index)
            row_ptr, values_ptr = _block_pointers(context, builder, signature, args, b, row_vector, values_vector)
            v = _convert(builder, builder.load(values_ptr, align=4), row_vector)
            updated = builder.fadd(builder.load(row_ptr, align=4), builder.fmul(v, weights, flags=_FAST), flags=_FAST)
            builder.store(updated, row_ptr, align=4)
        return context.get_dummy_value()

    return signature, codegen
