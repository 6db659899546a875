from tqsim.cli import main

main()
