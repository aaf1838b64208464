/* SPDX-License-Identifier: MIT */
/*
 * heapctl_shell.c: `heapctl shell`, commands read line by line and run in one session.
 *
 * From a terminal, lines are read with Debian's libedit through its readline interface (as
 * sqlite3's shell uses it): emacs-style editing, a history kept between runs in
 * $HEAPCTL_HISTFILE (by default ~/.heapctl_history, mode 0600, the last HISTORY_LINES lines;
 * set to "" it keeps none), and tab completion of commands, gc and trace subcommands, event
 * names and the shell's names (heapctl.c:shell_candidates says what fits where). From a pipe
 * or a file, lines are read plainly: nothing is prompted, edited or remembered.
 *
 * The exit code is the last command's (0 when none ran), as a shell script's is, so a script
 * that recovers from an error ends with 0; a lost connection ends the shell at once with its
 * code.
 *
 * This file owns the reading of lines and the history; running a line's command, and what
 * the commands are, is heapctl.c's.
 *
 * Global state: `completing`, the shell's ctx_t while it reads a line from a terminal (the
 * completion callback of libedit takes no argument of ours), and the candidates of the
 * completion under way.
 */
#include "heapctl.h"

#include <editline/readline.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Lines of history kept in the file: redis-cli keeps 100, bash 500; a shell session's work
 * is often a few hundred lines. */
#define HISTORY_LINES 1000

/* ------------------------------------------------------------------------------------------ */
/* Completion.                                                                                 */
/* ------------------------------------------------------------------------------------------ */

static ctx_t *completing;

/* The candidates of the completion under way, each handed to libedit (which frees it) by
 * next_candidate. Invariant: next <= n <= cap. */
static struct {
    char **v;
    size_t n, cap, next;
    const char *prefix;
} cand;

static void add_candidate(void *arg, const char *word) {
    (void)arg;
    if (strncmp(word, cand.prefix, strlen(cand.prefix)) != 0) return;
    for (size_t i = 0; i < cand.n; i++)
        if (strcmp(cand.v[i], word) == 0) return;
    if (cand.n == cand.cap) {
        size_t cap = cand.cap ? 2 * cand.cap : 32;
        char **v = realloc(cand.v, cap * sizeof *v);
        if (!v) return; /* fewer candidates: nothing worse */
        cand.v = v;
        cand.cap = cap;
    }
    char *w = strdup(word);
    if (w) cand.v[cand.n++] = w;
}

static char *next_candidate(const char *text, int state) {
    (void)text;
    (void)state;
    return cand.next < cand.n ? cand.v[cand.next++] : NULL;
}

/* libedit's completion callback: the word at [start, end) of rl_line_buffer. */
static char **complete(const char *text, int start, int end) {
    (void)end;
    rl_attempted_completion_over = 1; /* never file names */
    for (size_t i = cand.next; i < cand.n; i++)
        free(cand.v[i]);
    cand.n = cand.next = 0;
    cand.prefix = text;
    char *head = strndup(rl_line_buffer, (size_t)start);
    if (!head) return NULL;
    char *words[MAX_ARGS];
    int n = split_words(head, words, MAX_ARGS);
    if (n >= 0) shell_candidates(completing, words, n, add_candidate, NULL);
    free(head);
    char **matches = cand.n ? rl_completion_matches(text, next_candidate) : NULL;
    for (size_t i = cand.next; i < cand.n; i++) /* any libedit did not take */
        free(cand.v[i]);
    cand.n = cand.next = 0;
    return matches;
}

/* ------------------------------------------------------------------------------------------ */
/* History.                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* The history file: $HEAPCTL_HISTFILE, else ~/.heapctl_history; NULL for none. Malloc'd. */
static char *history_path(void) {
    const char *env = getenv("HEAPCTL_HISTFILE");
    if (env) return *env ? strdup(env) : NULL;
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    size_t n = strlen(home) + sizeof "/.heapctl_history";
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/.heapctl_history", home);
    return p;
}

/* Saves the history; the file is the user's alone (it may hold payloads typed in). A file
 * that cannot be written costs the history, not the command: warned about once. */
static void save_history(const char *path) {
    static int warned;
    if (!path) return;
    mode_t old = umask(077);
    int rc = write_history(path);
    umask(old);
    if (rc != 0 && !warned) {
        warned = 1;
        fprintf(stderr, "heapctl: cannot save the history to %s\n", path);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The shell.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* The next line from a terminal, without its newline; NULL at end of input. Malloc'd. */
static char *read_edited(const char *path) {
    char *line = readline("heapd> ");
    if (line && line[strspn(line, " \t")]) {
        add_history(line);
        save_history(path);
    }
    return line;
}

/* The next line from a pipe or a file; NULL at end of input. Malloc'd. */
static char *read_plain(void) {
    char *line = NULL;
    size_t cap = 0;
    if (getline(&line, &cap, stdin) < 0) {
        free(line);
        return NULL;
    }
    return line;
}

int run_shell(ctx_t *x, int argc, char **argv) {
    (void)argv;
    if (argc > 1) {
        usage_err(x, "shell takes no arguments; it reads commands from stdin");
        shell_reject(x);
        return EXIT_USAGE;
    }
    int interactive = isatty(STDIN_FILENO) && isatty(STDOUT_FILENO) && !x->json;
    char *path = NULL;
    if (interactive) {
        completing = x;
        rl_readline_name = "heapctl"; /* "heapctl:" lines of ~/.editrc apply */
        rl_attempted_completion_function = complete;
        path = history_path();
        stifle_history(HISTORY_LINES);
        if (path) read_history(path); /* none yet: an empty history */
        printf("heapd shell, session %s. `help` lists the commands, tab completes; end with "
               "quit or ^D.\n",
               hdc_hello_info(x->c)->session_id);
        fflush(stdout);
    }
    int last = EXIT_OK, eof = 1;
    x->in_shell = 1;
    for (char *line; (line = interactive ? read_edited(path) : read_plain()) != NULL;) {
        char *words[MAX_ARGS];
        int n = split_words(line, words, MAX_ARGS);
        int quit = n > 0 && (strcmp(words[0], "quit") == 0 || strcmp(words[0], "exit") == 0);
        if (n == 0 || quit) {
            free(line);
            if (quit) {
                eof = 0;
                break;
            }
            continue;
        }
        const cmd_t *cmd = n > 0 ? find_cmd(words[0]) : NULL;
        if (n < 0) {
            usage_err(x, "cannot parse the line: unclosed quote or over %d words", MAX_ARGS);
            shell_reject(x);
            last = EXIT_USAGE;
        } else if (!cmd || (cmd->flags & CMD_NOSHELL)) {
            usage_err(x, "unknown command \"%s\" (try `help`)", words[0]);
            shell_reject(x);
            last = EXIT_USAGE;
        } else {
            last = exit_code_for(run_command(x, cmd, n, words));
        }
        free(line);
        if (last == EXIT_LOST) { /* nothing more can be done on this session */
            eof = 0;
            break;
        }
    }
    if (interactive && eof) putchar('\n'); /* ^D leaves the cursor after the prompt */
    x->in_shell = 0;
    completing = NULL;
    free(path);
    free(cand.v);
    cand.v = NULL;
    cand.cap = 0;
    return last;
}
