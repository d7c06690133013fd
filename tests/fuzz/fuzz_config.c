/* libFuzzer harness of the config reader (src/config/config.c): the input
 * is read as an INI file by cfx_config_load, as a layer list by
 * cfx_parse_layers and, split at its first '=', as a --set override. An
 * accepted config must format (cfx_config_to_ini) and read back to the same
 * text. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cfx/config.h" /* defines: cfx_config_load, cfx_parse_layers, cfx_config_set */
#include "fuzz_util.h"  /* defines: fuzz_scratch_file */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cfx_config cfg;
    cfx_error err = {{0}};
    const char *path = fuzz_scratch_file("config", ".ini", data, size);
    if (cfx_config_load(&cfg, path, 0, NULL, &err) == 0) {
        /* What cfx-train stores in checkpoints must read back as the same config. */
        char *ini = cfx_config_to_ini(&cfg);
        const char *again = fuzz_scratch_file("config", ".ini", (const uint8_t *)ini, strlen(ini));
        cfx_config cfg2;
        if (cfx_config_load(&cfg2, again, 0, NULL, &err) != 0)
            abort(); /* the formatted config does not load */
        char *ini2 = cfx_config_to_ini(&cfg2);
        if (strcmp(ini, ini2) != 0)
            abort(); /* the formatted config does not read back to itself */
        free(ini);
        free(ini2);
    }

    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    cfx_layer_spec layers[CFX_MAX_LAYERS];
    int n_layers = 0;
    cfx_parse_layers(text, layers, &n_layers, &err);
    char *eq = strchr(text, '=');
    if (eq) {
        *eq = '\0';
        cfx_config_defaults(&cfg);
        cfx_config_set(&cfg, text, eq + 1, &err);
    }
    free(text);
    return 0;
}
