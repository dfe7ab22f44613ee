// The executable: all of the program lives in the llama2 library (run.cpp, formats.cpp), so that
// the tests link the same code.
#include "llama2.hpp"

int main(int argc, char** argv) { return llama2::run_main(argc, argv); }
