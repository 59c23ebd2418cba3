from asr.cli import main

main(prog_name="asr")
