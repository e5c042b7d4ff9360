/**
 * Minimal CSV reader for nf-test assertions (nf-test 0.9 core has none): the pipeline's tables
 * are plain comma-separated text without quoted commas. Returns one Map per row, header keys.
 */
class Csv {

    static List<Map<String, String>> rows(Object file, String sep = ',') {
        def lines = new File(file.toString()).readLines().findAll { it.trim() }
        if (!lines) {
            return []
        }
        def header = lines[0].split(sep, -1) as List
        return lines.drop(1).collect { line ->
            def cells = line.split(sep, -1) as List
            assert cells.size() == header.size() : "${file}: row '${line}' has ${cells.size()} fields, header ${header.size()}"
            [header, cells].transpose().collectEntries { it } as Map<String, String>
        }
    }

    static List<String> header(Object file, String sep = ',') {
        return new File(file.toString()).readLines()[0].split(sep, -1) as List
    }
}
