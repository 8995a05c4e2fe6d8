from pangu_cli.cli import main

main()
