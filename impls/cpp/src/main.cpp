// The executable: all of the program lives in run.cpp, so that the tests link the same code.
#include "llama2.hpp"

int main(int argc, char** argv) { return llama2::run_main(argc, argv); }
