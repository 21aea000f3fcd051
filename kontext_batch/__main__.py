from kontext_batch.cli.commands import main

main()
