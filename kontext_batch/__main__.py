from kontext_batch.cli import main

main()
