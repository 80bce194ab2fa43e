from l9.entry import main

main()
