"""Shared machinery of the patches: version gate and checked source rewrites.

A patch never edits megatron-core on disk. It rewrites one function's source in memory, and only
after checking that every snippet it replaces is present, so an upstream change fails loudly at
start-up instead of silently running different code.
"""
import importlib
import inspect
import textwrap

SUPPORTED_MEGATRON_VERSIONS = ("0.16.1",)


class PatchMismatchError(RuntimeError):
    """The megatron-core code a patch targets is not what the patch was written against."""


def check_megatron_version() -> str:
    from megatron.core import package_info

    version = package_info.__version__
    if version not in SUPPORTED_MEGATRON_VERSIONS:
        raise PatchMismatchError(
            f"megatron_patches supports megatron-core {', '.join(SUPPORTED_MEGATRON_VERSIONS)}, "
            f"found {version}; re-check every patch in megatron_patches/ against the new release")
    return version


def _resolve(module_name: str, qualname: str):
    module = importlib.import_module(module_name)
    owner, *rest = qualname.split(".")
    if not rest:
        return module, None, owner, getattr(module, owner)
    cls = getattr(module, owner)
    return module, cls, rest[0], inspect.unwrap(cls.__dict__[rest[0]])


def _apply_replacements(source: str, where: str, replacements) -> str:
    for old, new in replacements:
        if old not in source:
            raise PatchMismatchError(
                f"{where}: expected code not found, megatron-core changed; wanted:\n    {old}")
        source = source.replace(old, new)
    return source


def _strip_decorators(source: str) -> str:
    lines = source.splitlines(keepends=True)
    first_def = next(i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def ")))
    return "".join(lines[first_def:])


def rewrite_function(module_name: str, qualname: str, replacements, source: str = None):
    """Recompile `module.qualname` ("func" or "Class.method") with `replacements` applied.

    The function object keeps its identity and decorators; only its `__code__` is swapped, so
    names imported elsewhere (`from .clip_grads import f`) see the patch too. A `__class__` cell
    is provided so methods that use zero-argument `super()` compile the same free variables.
    `source` lets tests feed altered code.
    """
    module, _cls, name, func = _resolve(module_name, qualname)
    where = f"{module_name}.{qualname}"
    original = getattr(func, "__superrl_original_source__", None) or inspect.getsource(func)
    source = original if source is None else source
    new_source = _apply_replacements(_strip_decorators(textwrap.dedent(source)), where, replacements)
    factory = "def __superrl_factory(__class__):\n" + textwrap.indent(new_source, "    ")
    factory += f"\n    return {name}\n"
    namespace = {}
    exec(compile(factory, f"<megatron_patches: {where}>", "exec"), module.__dict__, namespace)
    new_code = namespace["__superrl_factory"](None).__code__
    if new_code.co_freevars != func.__code__.co_freevars:
        raise PatchMismatchError(f"{where}: closure variables changed "
                                 f"({func.__code__.co_freevars} -> {new_code.co_freevars})")
    func.__code__ = new_code
    func.__superrl_original_source__ = original  # re-applying patches starts from upstream code
    return func


def apply_rewrites(rewrites) -> None:
    """Apply (module, qualname, [(old, new), ...]) rewrites."""
    for module_name, qualname, replacements in rewrites:
        rewrite_function(module_name, qualname, replacements)
