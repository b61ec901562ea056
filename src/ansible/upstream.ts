// CKAN's upstream git source: what `init --from-ansible --ckan-ref` clones unless told otherwise. Its
// own module so that the command line's help can name it without loading the converter.
export const CKAN_UPSTREAM = 'https://github.com/ckan/ckan.git';
