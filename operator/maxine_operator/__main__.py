import sys

from maxine_operator.cli import main

sys.exit(main())
