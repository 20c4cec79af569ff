from twinloop.cli import main

main()
