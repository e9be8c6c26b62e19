"""What elf_fast's command lines share: how they end on a user error (:func:`run`), the sampler
and compile options, and turning them (and ``--checkpoint`` / ``--device`` / ``--dtype``) into a
:class:`~elf_fast.generator.Generator` and a :class:`~elf_fast.sampling.SamplerConfig`.
"""

from __future__ import annotations

import argparse
import os
import sys

from elf_fast import validate
from elf_fast.checkpoint import RECOMMENDABLE, CheckpointError
from elf_fast.extras import MissingDependency
from elf_fast.ops import BackendUnavailable
from elf_fast.generator import Generator, resolve_device
from elf_fast.sampling import COMPILE_MODES, METHOD_DEFAULTS, SamplerConfig

#: What a user's input can cause: bad values (ValueError), missing, unreadable or unwritable files
#: and folders (OSError: FileNotFoundError, PermissionError, IsADirectoryError, ...), unusable
#: checkpoints, optional packages not installed, a forced kernel back-end (ELF_FAST_BACKEND) not
#: built. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, CheckpointError, MissingDependency, BackendUnavailable)


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors end like every other user error: one line
    ``error: ...`` and exit status 2 under :func:`run` (argparse prints the usage and ``prog: error:``)."""

    def error(self, message):
        raise SystemExit(f"error: {message} (see {self.prog} --help)")


def run(main, argv=None) -> int:
    """Run a command's ``main(argv)`` the way every elf_fast entry point ends: a user error
    (:data:`USER_ERRORS`, or ``SystemExit("error: ...")``) prints one line ``error: ...`` on stderr
    and returns exit status 2, without a traceback; Ctrl-C returns 130. ``ELF_FAST_DEBUG=1`` lets
    every exception through with its traceback."""
    debug = os.environ.get("ELF_FAST_DEBUG", "") not in ("", "0")
    try:
        return main(argv)
    except SystemExit as e:
        if not isinstance(e.code, str) or debug:
            raise
        message = e.code[len("error:"):].strip() if e.code.startswith("error:") else e.code
        print(f"error: {_one_line(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


# command-line option (argparse dest) of each recommendable sampler setting
_OPTION = {"steps": "steps", "sampler": "sampler", "gamma": "gamma", "w_sc": "sc_cfg", "cfg": "cfg", "grid": "grid"}
assert set(_OPTION) == set(RECOMMENDABLE)


def add_generator_args(ap) -> None:
    """``--checkpoint``, ``--port-config`` and ``--encoder``, shared by the commands that load a Generator."""
    ap.add_argument("--checkpoint", help="an elf_fast .safetensors file, a training run folder (its newest checkpoint), "
                                         "a ckpt_<step> folder, a port checkpoint_<step> file or folder, a published "
                                         "model (embedded-language-flows/ELF-B-owt-torch, ELF-B-de-en-torch, ...: "
                                         "docs/published_models.md) or any hub repo id (downloaded into the Hugging "
                                         "Face cache) (default: the checkpoint shipped in the package)")
    ap.add_argument("--port-config", help="for a port checkpoint_<step>: the port's training YAML "
                                          "(train_de-en_ELF-B.yml ...), which gives the encoder, latent statistics, "
                                          "task and lengths the file lacks (default: a config.yml beside it)")
    ap.add_argument("--encoder", help="use this encoder (local folder or hub name) instead of the checkpoint's, "
                                      "e.g. a local copy of t5-small")


def add_compile_arg(ap) -> None:
    """``--compile MODE``, shared by ``elf_fast.sample`` and ``elf_fast.evaluate``."""
    ap.add_argument("--compile", choices=COMPILE_MODES, default=None, metavar="MODE",
                    help="torch.compile the network (" + ", ".join(COMPILE_MODES) + "; reduce-overhead adds "
                         "CUDA graphs on CUDA); the first batch then includes the compile time")


def add_sampler_args(ap: argparse.ArgumentParser) -> None:
    """The sampler options shared by ``elf_fast.sample``, ``elf_fast.evaluate`` and ``export_builtin``;
    None means the checkpoint's recommendation, else the method's defaults (METHOD_DEFAULTS)."""
    u, c = METHOD_DEFAULTS[False], METHOD_DEFAULTS[True]

    def default(key):
        return f"default: {u[key]} (unconditional), {c[key]} (conditional)" if u[key] != c[key] else f"default {u[key]}"

    lim = validate.LIMITS
    ap.add_argument("--steps", type=validate.arg_setting("steps"), help=default("steps") + f"; at most {lim['steps'][1]}")
    ap.add_argument("--sampler", choices=("sde", "ode"), help=default("sampler"))
    ap.add_argument("--gamma", type=validate.arg_setting("gamma"),
                    help=f"SDE churn ({default('gamma')}; in [{lim['gamma'][0]:g}, {lim['gamma'][1]:g}])")
    ap.add_argument("--sc-cfg", type=validate.arg_setting("w_sc"),
                    help=f"self-conditioning CFG scale w_sc ({default('w_sc')}; in [{lim['w_sc'][0]:g}, {lim['w_sc'][1]:g}])")
    ap.add_argument("--cfg", type=validate.arg_setting("cfg"),
                    help=f"CFG scale, conditional checkpoints only (default {c['cfg']}; in [{lim['cfg'][0]:g}, {lim['cfg'][1]:g}])")
    ap.add_argument("--grid", choices=("logit_normal", "uniform"), help=f"time grid ({default('grid')})")


def given_sampler_options(args) -> dict:
    """The sampler settings set on the command line, by their header (RECOMMENDABLE) names."""
    return {k: getattr(args, opt) for k, opt in _OPTION.items() if getattr(args, opt) is not None}


def sampler_from_args(gen: Generator, args, *, announce: bool = True) -> SamplerConfig:
    """The run's sampler (command line > the checkpoint's recommendation > the method's defaults);
    says on stderr which recommended settings it took. SystemExit for bad settings."""
    given = given_sampler_options(args)
    try:
        cfg = gen.sampler(**given)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if announce:
        announce_recommended(gen, args)
    return cfg


def announce_recommended(gen: Generator, args) -> None:
    """Say on stderr which of the checkpoint's recommended sampler settings the run takes."""
    given = given_sampler_options(args)
    taken = {k: v for k, v in gen.header.sampler.items() if k not in given}
    if taken:
        print("using the checkpoint's recommended " + ", ".join(f"{k} {v}" for k, v in taken.items())
              + " (options on the command line take precedence)", file=sys.stderr)


def check_backend_env(device) -> None:
    """A forced back-end (``ELF_FAST_BACKEND``) that is not a choice or cannot run on ``device``
    ends the command now, before it writes anything, not at the first op."""
    from elf_fast import ops

    choice = os.environ.get("ELF_FAST_BACKEND")
    if choice in (None, "", "auto"):
        return
    try:
        for op in ("flow_step", "unembed_argmax"):
            ops._kernel(op, device, None)
    except (ValueError, BackendUnavailable) as e:
        raise SystemExit(f"error: {e}") from e


def resolve_device_arg(name: str, option: str = "--device"):
    """A ``--device`` (or ``option``) value as a torch device; SystemExit with one line when it is not usable."""
    try:
        return resolve_device(name)
    except ValueError as e:
        raise SystemExit(f"error: {option} {e}") from e


def load_generator(args) -> Generator:
    """The Generator of ``--checkpoint`` (a path or a name; default: the built-in model, see
    :meth:`Generator.from_pretrained`) with ``--port-config`` and ``--encoder``, on ``--device`` with
    ``--dtype`` and ``--compile``; bad devices exit with a one-line error."""
    if args.checkpoint is not None and not args.checkpoint.strip():
        raise SystemExit("error: --checkpoint is empty (leave it out for the built-in model)")
    device = resolve_device_arg(args.device)
    check_backend_env(device)
    try:
        gen = Generator.from_pretrained(args.checkpoint, port_config=args.port_config, encoder=args.encoder,
                                        device=device, dtype=args.dtype, compile=args.compile)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if args.compile:
        print(f"compiling the network (torch.compile mode {args.compile}): the first batch takes longer",
              file=sys.stderr)
    return gen
