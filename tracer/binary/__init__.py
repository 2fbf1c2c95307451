r"""Static binary analysis: read an executable before anything attaches to it.

    info = analyze("/path/to/manager")
    fn, = find_functions(info, r"\(\*FooReconciler\)\.Reconcile$")
    bp = go_post_prologue(info, fn) if info.language == "go" else native_entry(info, fn)
    rets = return_addresses(info, fn)
"""

from .analyze import analyze, find_functions, nearest_names, read_function_code
from .disasm import go_post_prologue, native_entry, return_addresses
from .model import BinaryError, BinaryInfo, Function

__all__ = [
    "BinaryError",
    "BinaryInfo",
    "Function",
    "analyze",
    "find_functions",
    "go_post_prologue",
    "native_entry",
    "nearest_names",
    "read_function_code",
    "return_addresses",
]
