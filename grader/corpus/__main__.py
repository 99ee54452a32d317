import sys

from grader.corpus import main

sys.exit(main())
