#include <stdio.h>
/* Reads one line of a dbench load file. */
int read_load_line(FILE *f, char *buf, int len) { return fgets(buf, len, f) != NULL; }
