"""A software prefetch for numba kernels that probe tables far larger than the caches (numba has none of its own).

Used by :mod:`mediation.dedup` and :mod:`mediation.subscribers.index`: a probe loop prefetches the slot of the
query some places ahead, so the cache misses of independent queries overlap instead of waiting one after another
behind the branches of the loop.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """``__builtin_prefetch(&array[index])`` (read, keep in all cache levels): numba has no prefetch of its own."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        item = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])  # type: ignore[no-untyped-call]
        ptr = builder.bitcast(item, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")  # type: ignore[no-untyped-call]
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen
