import sys

from jacverify.cli import main

sys.exit(main())
