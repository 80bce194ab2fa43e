from l9.cli import main

main()
