from fastwsss.cli import main

main()
