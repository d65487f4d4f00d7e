import sys

from paddler_trio.cli import main

sys.exit(main())
