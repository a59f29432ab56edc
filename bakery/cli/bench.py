"""placeholder"""


def setup_parser(sub, common):
    return sub.add_parser("bench", parents=[common], help="(coming)")


def run(args) -> int:
    return 0
