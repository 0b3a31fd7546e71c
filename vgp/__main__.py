from vgp.cli import main

main()
