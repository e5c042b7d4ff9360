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

    /**
     * A snapshot entry for a table of floats: '<name> (N decimals):md5,<hex>', the md5 of the table
     * with every decimal number written with N decimals (integers and text as they are). The last
     * bits of a float depend on the CPU (numpy's AVX-512 log10, OpenBLAS's kernel), so the file's
     * own md5 differs between machines; N = 8 hides those (1e-15) and still catches any change of
     * 1e-8. tests/unit/test_nftest_snapshots.py computes the same text in Python (rounded_table):
     * keep the two in step.
     */
    static String rounded(Object file, int decimals = 8, String sep = ',') {
        def f = new File(file.toString())
        def lines = f.readLines().findAll { it.trim() }
        def text = lines.collect { line ->
            (line.split(sep, -1) as List).collect { cell -> roundCell(cell, decimals) }.join(sep)
        }.join('\n') + '\n'
        def md5 = java.security.MessageDigest.getInstance('MD5').digest(text.getBytes('UTF-8'))
        return "${f.name} (${decimals} decimals):md5,${md5.encodeHex()}"
    }

    /** A decimal number (with '.' or an exponent) to ``decimals`` places, half-even on its exact value. */
    static String roundCell(String cell, int decimals) {
        if (!(cell ==~ /[+-]?(\d+\.\d*|\.\d+|\d+(?=[eE]))([eE][+-]?\d+)?/)) {
            return cell
        }
        def out = new BigDecimal(Double.parseDouble(cell)).setScale(decimals, java.math.RoundingMode.HALF_EVEN).toPlainString()
        return out.startsWith('-') && out.replaceAll(/[-0.]/, '').isEmpty() ? out.substring(1) : out
    }
}
