"""Run the Hub emulator by hand: `python -m tests.hub_emulator [--port N]`, then point a client at it.

Example:

    $ python -m tests.hub_emulator --port 8765
    HF_ENDPOINT=http://127.0.0.1:8765
    $ HF_ENDPOINT=http://127.0.0.1:8765 HF_HUB_DISABLE_XET=1 HF_TOKEN=anything hf upload me/model ./out
"""

import argparse
import threading

from .server import HubEmulator


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hub_emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free one)")
    parser.add_argument("--require-token", action="store_true", help="reject writes without a bearer token")
    args = parser.parse_args()

    with HubEmulator(host=args.host, port=args.port, require_token=args.require_token) as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        print("Also set HF_HUB_DISABLE_XET=1 in the client. Serving until Ctrl-C.", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("Stopped.")


if __name__ == "__main__":
    main()
