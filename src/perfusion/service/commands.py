"""`perfusion serve`: start the service, or manage its users' keys."""

from __future__ import annotations

import sys

from perfusion.errors import CommandError


def add_serve(commands) -> None:
    parser = commands.add_parser("serve", help="serve concepts to many users over HTTP, with a web page")
    parser.add_argument("--model", help="base model folder (default: the embedded model)")
    parser.add_argument("--data", required=True, help="the service's folder (database, concepts, images)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--add-user", metavar="NAME", help="print a new API key for NAME and exit")
    parser.add_argument("--revoke-user", metavar="NAME", help="revoke NAME's key and exit")
    parser.add_argument("--training-steps", type=int, help="steps of a training job (default: the model's recipe)")
    parser.add_argument("--batch-window", type=float, default=0.05, help="seconds a batch waits for more requests")
    parser.add_argument("--batch-rows", type=int, default=8, help="images in one pipeline call")
    parser.set_defaults(run=run_serve)


def run_serve(args) -> None:
    from pathlib import Path

    from perfusion.service.config import ServiceConfig, ServiceConfigError
    from perfusion.service.store import Store

    data = Path(args.data)
    if args.add_user or args.revoke_user:
        data.mkdir(parents=True, exist_ok=True)
        store = Store(data / "perfusion.db")
        try:
            if args.add_user:
                print(store.add_user(args.add_user))
            else:
                store.revoke_user(args.revoke_user)
                print(f"revoked {args.revoke_user}", file=sys.stderr)
        except ValueError as error:
            raise CommandError(str(error)) from None
        return
    try:
        import uvicorn

        from perfusion.service.app import create_app
    except ImportError as error:
        raise CommandError(f"perfusion serve needs the serve extra: pip install 'perfusion[serve]' ({error})") from None
    if args.model is None:
        from perfusion.world.model_path import default_model_path

        args.model = str(default_model_path())
    try:
        config = ServiceConfig(
            model=args.model,
            data=data,
            training_steps=args.training_steps,
            batch_window_s=args.batch_window,
            batch_rows=args.batch_rows,
        )
    except ServiceConfigError as error:
        raise CommandError(str(error)) from None
    app = create_app(config)
    print(f"perfusion: serving {args.model} on http://{args.host}:{args.port} (API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
