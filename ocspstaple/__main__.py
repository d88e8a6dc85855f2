from __future__ import annotations

from ocspstaple.cli import main

if __name__ == "__main__":
    main()
