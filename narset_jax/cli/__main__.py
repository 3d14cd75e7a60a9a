import sys

from narset_jax.cli import main

sys.exit(main())
