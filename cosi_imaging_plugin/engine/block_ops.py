"""Vector operations on the response's 16-entry blocks, written as LLVM intrinsics.

The kernels of :mod:`.kernels` spend their time on one operation: the stored
blocks of one CDS column (``BLOCK`` consecutive source entries each) against the
model rows of that column's non-empty bins. Numba's own code for it loads and
multiplies one element at a time (its loop vectorizer prefers gathers across
blocks, and its SLP vectorizer is off), so these intrinsics emit each block as
one vector load, multiply and add. They take a group of ``n`` bins of the same
column at once: each stored block is loaded and converted once for the group, and
the group's ``n`` independent sums keep the vector units busy where one sum would
wait on its own additions.

- ``dot_blocks_<n>(rows, row_index, q0, block, values, b0, b1, out)``:
  ``out[q] += sum_b sum_u rows[row_index[q], block[b]*BLOCK + u] * values[b, u]``
  for ``q = q0 .. q0 + n - 1``, accumulated in float64 whatever the input types.
- ``axpy_blocks_<n>(rows, row_index, q0, block, values, b0, b1, weights)``:
  ``rows[row_index[q], block[b]*BLOCK + u] += weights[q] * values[b, u]`` in the
  rows' type, for the same ``q``.

The rows of one group must be distinct (they are: one bin per row and column).
All arrays must be C-contiguous; there are no bounds checks, the callers in
:mod:`.kernels` guarantee the indices.
"""
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Source entries per stored block (one 64-byte cache line of float32).
BLOCK = 16
#: Bins handled together by the ``*_blocks_4`` operations.
GROUP = 4

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_F64 = ir.DoubleType()
_FAST = ("fast",)


def _check_types(rows, row_index, block, values, vector):
    """Typing guard: C-contiguous 2-D float rows and values, signed integer index arrays, a 1-D float vector."""
    def array(a, ndim, kind):
        return isinstance(a, types.Array) and a.ndim == ndim and a.layout == "C" and isinstance(a.dtype, kind)

    def signed_index(a):  # the indices are sign-extended to 64 bits
        return array(a, 1, types.Integer) and a.dtype.signed

    return (array(rows, 2, types.Float) and signed_index(row_index) and signed_index(block)
            and array(values, 2, types.Float) and array(vector, 1, types.Float))


def _convert(builder, vector, target):
    """Convert a float vector to the float vector type `target`."""
    if vector.type == target:
        return vector
    if target.element == _F64:
        return builder.fpext(vector, target)
    return builder.fptrunc(vector, target)


def _as_i64(context, builder, value, numba_type):
    return context.cast(builder, value, numba_type, types.int64)


def _load_index(builder, pointer):
    value = builder.load(pointer)
    return builder.sext(value, _I64) if value.type.width < 64 else value


def _group_rows(context, builder, signature, args, n):
    """``q0`` and pointers to the start of the rows of bins ``q0 .. q0 + n - 1``."""
    rows = context.make_array(signature.args[0])(context, builder, args[0])
    row_index = context.make_array(signature.args[1])(context, builder, args[1])
    q0 = _as_i64(context, builder, args[2], signature.args[2])
    width = builder.extract_value(rows.shape, 1)
    pointers = []
    for i in range(n):
        row = _load_index(builder, builder.gep(row_index.data, [builder.add(q0, ir.Constant(_I64, i))]))
        pointers.append(builder.gep(rows.data, [builder.mul(row, width)]))
    return q0, pointers


def _for_blocks(context, builder, signature, args, values_vector, body):
    """Loop over the stored blocks ``b0 .. b1 - 1``: ``body(entry_offset, block_values)``."""
    block = context.make_array(signature.args[3])(context, builder, args[3])
    values = context.make_array(signature.args[4])(context, builder, args[4])
    lo = _as_i64(context, builder, args[5], signature.args[5])
    hi = _as_i64(context, builder, args[6], signature.args[6])
    with cgutils.for_range(builder, builder.sub(hi, lo)) as loop:
        b = builder.add(lo, loop.index)
        offset = builder.mul(_load_index(builder, builder.gep(block.data, [b])), ir.Constant(_I64, BLOCK))
        pointer = builder.gep(values.data, [builder.mul(b, ir.Constant(_I64, BLOCK))])
        body(offset, builder.load(builder.bitcast(pointer, values_vector.as_pointer()), align=4))


def _lane_sum(builder, total):
    """Pairwise sum of the lanes: a fixed order, so the result does not depend on the compiler."""
    width = BLOCK
    while width > 1:
        width //= 2
        low = builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        high = builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(_I32, width),
                                                                list(range(width, 2 * width))))
        total = builder.fadd(low, high)
    return builder.extract_element(total, ir.Constant(_I32, 0))


def _dot_blocks(n):
    """The intrinsic ``dot_blocks_<n>`` (see the module docstring)."""

    @intrinsic
    def dot_blocks(typingctx, rows, row_index, q0, block, values, b0, b1, out):
        if not _check_types(rows, row_index, block, values, out):
            return None
        signature = types.void(rows, row_index, q0, block, values, b0, b1, out)

        def codegen(context, builder, signature, args):
            row_vector = ir.VectorType(context.get_data_type(signature.args[0].dtype), BLOCK)
            values_vector = ir.VectorType(context.get_data_type(signature.args[4].dtype), BLOCK)
            lanes = ir.VectorType(_F64, BLOCK)
            q0, row_pointers = _group_rows(context, builder, signature, args, n)
            sums = [cgutils.alloca_once_value(builder, ir.Constant(lanes, [0.0] * BLOCK)) for _ in range(n)]

            def body(offset, block_values):
                v = _convert(builder, block_values, lanes)
                for row, acc in zip(row_pointers, sums):
                    pointer = builder.bitcast(builder.gep(row, [offset]), row_vector.as_pointer())
                    r = _convert(builder, builder.load(pointer, align=4), lanes)
                    builder.store(builder.fadd(builder.load(acc), builder.fmul(r, v, flags=_FAST), flags=_FAST), acc)

            _for_blocks(context, builder, signature, args, values_vector, body)
            out = context.make_array(signature.args[7])(context, builder, args[7])
            for i, acc in enumerate(sums):
                total = _lane_sum(builder, builder.load(acc))
                pointer = builder.gep(out.data, [builder.add(q0, ir.Constant(_I64, i))])
                old = context.cast(builder, builder.load(pointer), signature.args[7].dtype, types.float64)
                builder.store(context.cast(builder, builder.fadd(old, total), types.float64,
                                           signature.args[7].dtype), pointer)
            return context.get_dummy_value()

        return signature, codegen

    return dot_blocks


def _axpy_blocks(n):
    """The intrinsic ``axpy_blocks_<n>`` (see the module docstring)."""

    @intrinsic
    def axpy_blocks(typingctx, rows, row_index, q0, block, values, b0, b1, weights):
        if not _check_types(rows, row_index, block, values, weights):
            return None
        signature = types.void(rows, row_index, q0, block, values, b0, b1, weights)

        def codegen(context, builder, signature, args):
            row_type = signature.args[0].dtype
            row_vector = ir.VectorType(context.get_data_type(row_type), BLOCK)
            values_vector = ir.VectorType(context.get_data_type(signature.args[4].dtype), BLOCK)
            q0, row_pointers = _group_rows(context, builder, signature, args, n)
            weights = context.make_array(signature.args[7])(context, builder, args[7])
            splats = []
            for i in range(n):
                w = builder.load(builder.gep(weights.data, [builder.add(q0, ir.Constant(_I64, i))]))
                w = context.cast(builder, w, signature.args[7].dtype, row_type)
                splat = cgutils.get_null_value(row_vector)
                for u in range(BLOCK):
                    splat = builder.insert_element(splat, w, ir.Constant(_I32, u))
                splats.append(splat)

            def body(offset, block_values):
                v = _convert(builder, block_values, row_vector)
                for row, w in zip(row_pointers, splats):
                    pointer = builder.bitcast(builder.gep(row, [offset]), row_vector.as_pointer())
                    updated = builder.fadd(builder.load(pointer, align=4), builder.fmul(v, w, flags=_FAST),
                                           flags=_FAST)
                    builder.store(updated, pointer, align=4)

            _for_blocks(context, builder, signature, args, values_vector, body)
            return context.get_dummy_value()

        return signature, codegen

    return axpy_blocks


dot_blocks_1 = _dot_blocks(1)
dot_blocks_4 = _dot_blocks(GROUP)
axpy_blocks_1 = _axpy_blocks(1)
axpy_blocks_4 = _axpy_blocks(GROUP)
