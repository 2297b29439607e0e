import sys

from vatt.cli import main

sys.exit(main())
