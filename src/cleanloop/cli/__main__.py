from cleanloop.cli import main

main()
