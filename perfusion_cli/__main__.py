from perfusion_cli.cli.main import main

main()
