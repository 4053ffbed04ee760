"""``serve`` subcommand: every Settings field is also a flag (``--max-batch-size 16``).

Flags win over ``DIFFRES_*`` environment variables, which win over defaults.
"""

import argparse
import logging

from service.config import Settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="run the HTTP inference service",
                                   description=__doc__)
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                            help=f"{field.description or ''} (env DIFFRES_{name.upper()}, "
                            f"default {field.get_default(call_default_factory=True)!r})")
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {name: value for name, value in vars(args).items()
                 if name in Settings.model_fields and value is not None}
    return Settings(**overrides)


def run(args: argparse.Namespace) -> int:
    from service.serving.http.process_supervisor import run as serve
    from service.serving.http.request_logging import configure_logging

    settings = settings_from_args(args)
    configure_logging(settings.log_json, settings.log_level)
    return serve(settings)
