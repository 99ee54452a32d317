import sys

from tools.corpus import main

sys.exit(main())
