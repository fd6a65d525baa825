from splatops.controller.main import main

main()
